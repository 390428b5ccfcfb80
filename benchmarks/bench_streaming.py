"""Larger than RAM: `lowbit quantize --max-memory` on a synthetic llama of more than 8 GiB.

Issue #15's measure. A LlamaForCausalLM folder in bfloat16 (TinyLlama's block shape:
hidden 2048, MLP 5632, 16 heads / 4 KV heads, vocab 32000; 94 blocks by default: 4.37 G
parameters, 8.74 GB on disk) is written block by block with random weights, then quantized
w4a16-g128 with RTN and with GPTQ, each in a fresh process under --max-memory 2GB. The same
command on a 2-block toy model of the same code path gives the baseline resident memory
(Python, torch, transformers, lowbit): the budget is measured above it. In one run, side by
side: peak RSS above the baseline against the budget, seconds, and seconds per GB of input.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _report import Report, markdown_table

from lowbit_testkit.synthetic import synthetic_llama_folder

SHAPE = {"hidden": 2048, "intermediate": 5632, "heads": 16, "kv_heads": 4, "vocab": 32000}


def quantize(folder: Path, out: Path, recipe: str, budget: str, extra: list[str]) -> dict:
    """`lowbit quantize ... --json` in a fresh process: its JSON and wall time."""
    cli = [sys.executable, "-m", "lowbit.cli.main", "quantize", str(folder), "--recipe", recipe]
    cli += ["--max-memory", budget, "--out", str(out), "--json", *extra]
    started = time.perf_counter()
    done = subprocess.run(cli, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cli)} failed:\n{done.stderr[-3000:]}")
    doc = json.loads(done.stdout)
    doc["wall_s"] = time.perf_counter() - started
    return doc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=94, help="blocks (94: 8.74 GB)")
    parser.add_argument("--budget", default="2GB")
    parser.add_argument("--work", type=Path, help="folder for the model (default: a temp one)")
    parser.add_argument("--samples", type=int, default=8, help="GPTQ calibration windows")
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per window")
    parser.add_argument("--recipes", default="w4a16-g128,w4a16-g128-gptq")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="lowbit-bench-stream-"))
    report = Report()
    big, toy = work / "big", work / "toy"
    if not (big / "config.json").is_file():
        started = time.perf_counter()
        synthetic_llama_folder(big, layers=args.layers, **SHAPE)
        report.notes["written"] = f"{big} in {time.perf_counter() - started:.0f} s"
    if not (toy / "config.json").is_file():
        synthetic_llama_folder(
            toy, layers=2, hidden=64, intermediate=128, heads=4, kv_heads=2, vocab=512
        )
    input_bytes = sum(p.stat().st_size for p in big.glob("*.safetensors"))
    budget_mb = None
    rows, json_rows = [], []
    for recipe in args.recipes.split(","):
        extra = ["--samples", str(args.samples), "--seq-len", str(args.seq_len)]
        base = quantize(toy, work / "toy-out", recipe, args.budget, extra)
        result = quantize(big, work / "big-out", recipe, args.budget, extra)
        budget_mb = result["max_memory_bytes"] / 1e6
        above = result["peak_rss_mb"] - base["peak_rss_mb"]
        per_gb = result["wall_s"] / (input_bytes / 1e9)
        row = [
            recipe,
            f"{input_bytes / 1e9:.2f} GB",
            f"{result['weights_bytes'] / 1e9:.2f} GB",
            f"{result['peak_rss_mb']:.0f} MB",
            f"{base['peak_rss_mb']:.0f} MB",
            f"{above:.0f} MB",
            f"{above / budget_mb:.2f}",
            f"{result['wall_s']:.0f} s",
            f"{per_gb:.1f} s/GB",
        ]
        rows.append(row)
        kept = {k: result[k] for k in ("peak_rss_mb", "wall_s", "weights_bytes")}
        json_rows.append({"recipe": recipe, **kept, "baseline_rss_mb": base["peak_rss_mb"]})
        shutil.rmtree(work / "big-out", ignore_errors=True)
    header = ["recipe", "input (bf16)", "output", "peak RSS", "baseline RSS", "above baseline",
              f"/ budget ({budget_mb:.0f} MB)", "wall", "time per GB"]  # fmt: skip
    footer = [
        f"command: {report.command}",
        f"{args.layers} blocks of {SHAPE}; GPTQ on {args.samples} x {args.seq_len} tokens",
    ]
    report.add(
        "streamed",
        markdown_table(header, rows, title="Quantized one block at a time", footer=footer),
        json_rows,
    )
    report.print(as_json=args.json)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
