"""Every preset on transformers models keeps the model's class and output objects: a tiny
Llama still generates and scores perplexity, a tiny BERT-like encoder still returns
``last_hidden_state``, and fp16/bf16 saves reload as the same class (issue 11)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import transformers

from lowbit.errors import LowbitWarning
from lowbit.eval.embedding import embed
from lowbit.eval.perplexity import perplexity
from lowbit.io import load, save
from lowbit.recipes import PRESETS, quantize
from lowbit_testkit.models import tiny_bert as make_tiny_bert
from lowbit_testkit.models import tiny_llama

# int8-qat needs prepare_qat/convert (tests/test_recipes/test_qat.py).
TRANSFORMERS_PRESETS = [p for p in PRESETS if p != "int8-qat"] + [
    "w8a16",
    "w4a16-g32",
    "w4a16-g32-gptq",
    "w4a16-g32-awq",
]


def _quantize(model, preset: str, calib: list) -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LowbitWarning)  # few calibration samples
        return quantize(model, preset, calib_data=calib)


def tiny_bert() -> transformers.BertModel:
    return make_tiny_bert(vocab_size=96)


@pytest.mark.parametrize("preset", TRANSFORMERS_PRESETS)
def test_llama_keeps_its_class_generates_and_scores_perplexity(preset: str) -> None:
    model = tiny_llama()
    ids = torch.randint(0, 96, (4, 16), generator=torch.Generator().manual_seed(1))
    qmodel = _quantize(model, preset, [ids[:2], ids[2:]])
    assert type(qmodel) is type(model)
    with torch.no_grad():
        out = qmodel(ids)
    assert type(out) is type(model(ids)) and out.logits.dtype == torch.float32
    generated = qmodel.generate(ids[:1, :4], max_new_tokens=3, do_sample=False)
    assert generated.shape == (1, 7)
    result = perplexity(qmodel, ids.flatten(), ctx=32, stride=32)
    assert math.isfinite(result.ppl)


@pytest.mark.parametrize("preset", TRANSFORMERS_PRESETS)
def test_bert_encoder_keeps_last_hidden_state(preset: str) -> None:
    model = tiny_bert()
    ids = torch.randint(0, 96, (4, 12), generator=torch.Generator().manual_seed(1))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    qmodel = _quantize(model, preset, [batch])
    with torch.no_grad():
        hidden = qmodel(**batch).last_hidden_state
        ref = model(**batch).last_hidden_state
    assert hidden.dtype == torch.float32 and hidden.shape == ref.shape
    cosine = torch.nn.functional.cosine_similarity(hidden, ref, dim=-1).mean()
    floor = {"binary": 0.0, "ternary": 0.3}.get(preset, 0.9)
    assert cosine > floor, preset

    class Tokenizer:
        pad_token_id = 0

        def __call__(self, texts, truncation, max_length):
            rows = [[1 + (ord(c) % 90) for c in t][:max_length] for t in texts]
            return {"input_ids": rows, "attention_mask": [[1] * len(r) for r in rows]}

    assert embed(qmodel, Tokenizer(), ["a text", "another text"]).shape == (2, 32)


@pytest.mark.parametrize("preset", ["fp16", "bf16"])
def test_cast_save_reloads_as_the_same_class_and_generates(tmp_path, preset: str) -> None:
    qmodel = quantize(tiny_llama(), preset)
    loaded = load(save(qmodel, tmp_path / preset))
    assert type(loaded) is transformers.LlamaForCausalLM
    ids = torch.randint(0, 96, (1, 6))
    with torch.no_grad():
        assert torch.equal(qmodel(ids).logits, loaded(ids).logits)
    assert torch.equal(
        qmodel.generate(ids, max_new_tokens=3, do_sample=False),
        loaded.generate(ids, max_new_tokens=3, do_sample=False),
    )
