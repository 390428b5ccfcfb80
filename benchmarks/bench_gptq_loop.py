"""GPTQ's column loop on SmolLM2's layer shapes, side by side with round to nearest.

For each Linear shape of one SmolLM2-135M block (q/o 576x576, k/v 192x576, gate/up
1536x576, down 576x1536): ``algorithms.gptq_quantize`` in the ``w4a16-g128-gptq`` preset's
format (int4 symmetric, groups of 128, act order, static groups) against ``rtn_quantize`` of
the same format, and ``algorithms.gptq_blocks`` in GGUF's q4_0 (ggml's diag(H)-weighted
parameter search, then the loop; the search is included) against the codec's own round to
nearest. Weights and inputs are random (the loop's time depends on the shape only);
H = 2/n XᵀX of 512 inputs with uneven channel scales. One thread: the loop runs one column
at a time.

Run: python benchmarks/bench_gptq_loop.py [--repeats 5]
(docs/decisions.md "The suite's time" ran it at two commits: PYTHONPATH=<worktree>/src.)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch
from _report import Report, markdown_table

import lowbit
from lowbit.algorithms import gptq_quantize, rtn_quantize
from lowbit.algorithms.gptq_blocks import gptq_blocks
from lowbit.eval.latency import median_ratio, time_interleaved
from lowbit.formats.blocks import get_block_codec
from lowbit.recipes import get_recipe

# (name, out_features, in_features, layers of that shape in one block)
SHAPES = [("q_proj/o_proj", 576, 576, 2), ("k_proj/v_proj", 192, 576, 2),
          ("gate/up_proj", 1536, 576, 2), ("down_proj", 576, 1536, 1)]  # fmt: skip


def _layer(n: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(n * 7919 + k)
    w = torch.randn(n, k, generator=g)
    x = torch.randn(512, k, generator=g) * torch.rand(k, generator=g) * 3
    return w, 2 / 512 * x.t() @ x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    fmt = get_recipe("w4a16-g128-gptq").spec.weight.weight_format()
    q4_0 = get_block_codec("q4_0")
    rows, per_block = [], {"gptq_quantize": 0.0, "gptq_blocks": 0.0}
    for name, n, k, count in SHAPES:
        w, h = _layer(n, k)
        cases = {
            "rtn": lambda w=w: rtn_quantize(w, fmt),
            "gptq_quantize": lambda w=w, h=h: gptq_quantize(
                w, h, fmt, act_order=True, static_groups=True
            ),
            "q4_0 rtn": lambda w=w: q4_0.quantize(w),
            "gptq_blocks": lambda w=w, h=h: gptq_blocks(w, h, q4_0),
        }
        times = time_interleaved(cases, warmup=1, repeats=args.repeats, threads=1)
        ms = {c: 1000 * sorted(t)[len(t) // 2] for c, t in times.items()}
        for case, base in (("gptq_quantize", "rtn"), ("gptq_blocks", "q4_0 rtn")):
            ratio, lo, hi = median_ratio(times[case], times[base])  # GPTQ time / rtn time
            per_block[case] += count * ms[case]
            rows.append([f"{name} {n}x{k}", case, f"{ms[case]:.1f}", f"{ms[base]:.1f}",
                         f"{ratio:.0f}x ({lo:.0f}-{hi:.0f})"])  # fmt: skip

    report = Report()
    header = ["layer", "GPTQ", "median ms", "round to nearest ms", "GPTQ time vs rtn"]
    footer = [
        f"one SmolLM2 block (7 layers): gptq_quantize {per_block['gptq_quantize'] / 1000:.2f} s,"
        f" gptq_blocks q4_0 {per_block['gptq_blocks'] / 1000:.2f} s",
        f"command: `{report.command}`; lowbit from {Path(lowbit.__file__).parent}",
    ]
    report.add("GPTQ column loop", markdown_table(header, rows, footer=footer), rows)
    report.print()


if __name__ == "__main__":
    main()
