"""What a static KV cache and torch.compile buy for SmolLM2-135M batch-1 greedy decoding,
fp32 and w4a16-g32: tokens/s (median of 3 after one warm-up), compile time printed.

    TORCHINDUCTOR_COMPILE_THREADS=1 python benchmarks/bench_decode_compile.py
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import lowbit
from lowbit.eval.bundled import smollm2_gguf_path
from lowbit.io.hf import load_model

NEW_TOKENS = 32


def tokens_per_s(model: torch.nn.Module, ids: torch.Tensor, **kwargs) -> float:
    def run() -> None:
        model.generate(ids, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                       do_sample=False, **kwargs)  # fmt: skip

    run()
    times = []
    for _ in range(3):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return NEW_TOKENS / sorted(times)[1]


def main() -> None:
    torch.set_num_threads(2)
    warnings.simplefilter("ignore")
    loaded = load_model(smollm2_gguf_path())
    fp32, tok = loaded.model, loaded.tokenizer
    ids = tok("The quick brown fox", return_tensors="pt").input_ids
    w4 = lowbit.quantize(fp32, "w4a16-g32")
    for name, model in (("fp32", fp32), ("w4a16-g32", w4)):
        print(f"{name} eager, dynamic cache: {tokens_per_s(model, ids):.1f} tok/s", flush=True)
        static = tokens_per_s(model, ids, cache_implementation="static")
        print(f"{name} eager, static cache: {static:.1f} tok/s", flush=True)
        start = time.perf_counter()
        model.forward = torch.compile(model.forward, dynamic=False)
        compiled = tokens_per_s(model, ids, cache_implementation="static")
        print(
            f"{name} static cache + torch.compile: {compiled:.1f} tok/s "
            f"(first calls incl. compiling: {time.perf_counter() - start:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
