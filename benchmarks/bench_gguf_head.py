"""How much of a GGUF file's loss is its output head, and what calibrating it buys.

For a lowbit (or llama.cpp) GGUF file of SmolLM2, whose output head is tied to the token
embedding: lowbit's perplexity (ctx 512, the first --tokens tokens of the evaluation split)
of the source, of the file, of the file with the source's embedding put back, and of the file
with the embedding re-quantized in the file's type by: ggml's round to nearest, ggml's search
weighted by diag(H) (the imatrix way), and GPTQ (``algorithms.gptq_blocks``) at each --damp.
H is the head's inputs on the file's own model over calibration windows (never the
evaluation text), as ``lowbit export --method gptq`` computes it
(docs/decisions.md "GPTQ on the output head").

Run: python benchmarks/bench_gguf_head.py FILE.gguf [--tokens 10240] [--damp 0.01 0.1 1.0]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import torch
from _report import Report, markdown_table

from lowbit.algorithms.gptq_blocks import gptq_blocks
from lowbit.eval.bundled import smollm2_gguf_path
from lowbit.eval.calibration import token_windows
from lowbit.eval.perplexity import perplexity
from lowbit.eval.text import calibration_text, evaluation_text
from lowbit.export.gguf_calibrated import head_hessian
from lowbit.formats.blocks import get_block_codec
from lowbit.io.gguf.reader import read_gguf
from lowbit.io.hf import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path, help="a GGUF file of the bundled SmolLM2")
    parser.add_argument("--tokens", type=int, default=10240)
    parser.add_argument("--windows", type=int, default=16, help="calibration windows for H")
    parser.add_argument("--damp", type=float, nargs="*", default=[0.01, 0.1, 1.0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    text = evaluation_text()

    source = load_model(smollm2_gguf_path(), task="causal-lm")
    reference = source.model.get_input_embeddings().weight.detach().float().clone()
    ppl = perplexity(source.model, source.tokenizer, text, max_tokens=args.tokens).ppl
    rows = [["source", ppl, 0.0, 0.0]]
    del source

    loaded = load_model(args.file, task="causal-lm")
    model, tokenizer = loaded.model, loaded.tokenizer
    table = model.get_input_embeddings().weight
    if table.data_ptr() != model.get_output_embeddings().weight.data_ptr():
        parser.error(f"{args.file}: the output head is not tied to the token embedding")
    types = {t.name: t.type.name for t in read_gguf(args.file).tensors}
    codec = get_block_codec(types["token_embd.weight"])
    windows = token_windows(tokenizer, calibration_text(), samples=args.windows, seq_len=512)
    hessian = head_hessian(model, model.get_output_embeddings(), windows)

    def score(label: str, weight: torch.Tensor) -> None:
        """Perplexity with ``weight`` as the table; its error as a lookup table (mean square)
        and as the head (tr(ΔW H ΔWᵀ), what GPTQ minimises)."""
        with torch.no_grad():
            table.copy_(weight)
        diff = (weight.float() - reference).double()
        errors = (diff.pow(2).mean().item(), torch.einsum("ij,jk,ik->", diff, hessian, diff).item())
        ppl = perplexity(model, tokenizer, text, max_tokens=args.tokens).ppl
        rows.append([label, ppl, *errors])

    k = reference.shape[1]
    score("file", table.detach().float().clone())
    score("file + source embedding", reference)
    score("round to nearest", codec.dequantize(codec.quantize(reference), k))
    weighted = codec.quantize(reference, torch.diagonal(hessian).float())
    score("search weighted by diag(H)", codec.dequantize(weighted, k))
    for damp in args.damp:
        score(f"GPTQ, damp {damp}", codec.dequantize(gptq_blocks(reference, hessian, codec,
                                                                  damp=damp), k))  # fmt: skip

    source_ppl = rows[0][1]
    body = [[label, f"{ppl:.4f}", f"{100 * (ppl / source_ppl - 1):+.1f}%", f"{mse:.3g}",
             f"{head:.3g}"] for label, ppl, mse, head in rows]  # fmt: skip
    kind = types["token_embd.weight"]
    title = (f"{args.file.name}: the tied token_embd / output head as {kind} "
             f"(lowbit perplexity, first {args.tokens} tokens)")  # fmt: skip
    report = Report()
    header = ["embedding", "perplexity", "vs source", "table mean sq. error",
              "head error tr(ΔW H ΔWᵀ)"]  # fmt: skip
    report.add(title, markdown_table(header, body, title=title, footer=[f"`{report.command}`"]),
               [{"embedding": label, "ppl": ppl, "table_mse": mse, "head_error": head}
                for label, ppl, mse, head in rows])  # fmt: skip
    report.notes = {
        "H": f"the head's inputs on the file's model, {args.windows} calibration windows of 512",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    report.print(as_json=args.json)


if __name__ == "__main__":
    main()
