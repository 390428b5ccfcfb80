"""Quantize + pack a 4096x4096 fp32 matrix: lowbit vs gguf-py's numpy quantizers.

lowbit int8 per-channel (symmetric) is set against gguf Q8_0 and lowbit int4 per-group(32)
(symmetric, packed) against gguf Q4_0 — the same matrix, the same work (read fp32, write
codes + scales), not the same layout. Every lowbit result is first checked bit-identical to
lowbit's reference path (affine.choose_qparams/quantize + pack_codes), which is also timed
as the naive torch version. gguf-py is plain numpy: it runs on one core whatever --threads
says, so the 1-thread table is the per-core comparison.

Run:  .venv/bin/python benchmarks/bench_quantize.py [--threads 2 1] [--json]
"""

from __future__ import annotations

import os

# Compile in-process: inductor's default worker pool starts in the background after the first
# compile and steals the 2 cores from the timed rounds for seconds.
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")

import argparse
import importlib.metadata
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import Report
from harness import add_args, compare, format_table

from lowbit.errors import require
from lowbit.formats import PerAxis, PerGroup, choose_qparams, pack_codes, quantize
from lowbit.formats.fused import quantize_int8_per_channel, quantize_pack_int4_groups
from lowbit.formats.qtypes import IntType

INT8, INT4 = IntType(8, True), IntType(4, True)


def ref_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    qp = choose_qparams(w, INT8, PerAxis(0))
    return quantize(w, qp), qp.scale


def ref_int4(w: torch.Tensor, group: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    qp = choose_qparams(w, INT4, PerGroup(group))
    return pack_codes(quantize(w, qp).to(torch.int16) - qp.qmin, 4), qp.scale


def check_identical(w: torch.Tensor) -> None:
    """Refuse to time anything that is not bit-identical to the reference path."""
    for fast, ref in [
        (quantize_int8_per_channel(w), ref_int8(w)),
        (quantize_int8_per_channel(w, compiled=True), ref_int8(w)),
        (quantize_pack_int4_groups(w), ref_int4(w)),
        (quantize_pack_int4_groups(w, compiled=True), ref_int4(w)),
    ]:
        if not all(torch.equal(a, b) for a, b in zip(fast, ref, strict=True)):
            raise SystemExit("fast path differs from the reference path; not benchmarking")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096, help="matrix is size x size")
    add_args(parser, warmup=3, repeats=15)
    args = parser.parse_args()
    gguf = require("gguf", "gguf")
    from gguf.quants import quantize as gguf_quantize

    torch.manual_seed(0)
    w = torch.randn(args.size, args.size)
    a = w.numpy()
    q8_0, q4_0 = gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.Q4_0

    t0 = time.perf_counter()
    quantize_int8_per_channel(w, compiled=True)
    compile_int8 = time.perf_counter() - t0
    t0 = time.perf_counter()
    quantize_pack_int4_groups(w, compiled=True)
    compile_int4 = time.perf_counter() - t0
    check_identical(w)

    cases = {
        "gguf Q8_0": lambda: gguf_quantize(a, q8_0),
        "lowbit int8": lambda: quantize_int8_per_channel(w),
        "lowbit int8 compiled": lambda: quantize_int8_per_channel(w, compiled=True),
        "naive int8": lambda: ref_int8(w),
        "gguf Q4_0": lambda: gguf_quantize(a, q4_0),
        "lowbit int4": lambda: quantize_pack_int4_groups(w),
        "lowbit int4 compiled": lambda: quantize_pack_int4_groups(w, compiled=True),
        "naive int4": lambda: ref_int4(w),
    }
    pairs = [
        ("int8 per-channel, eager vs Q8_0", "lowbit int8", "gguf Q8_0"),
        ("int8 per-channel, compiled vs Q8_0", "lowbit int8 compiled", "gguf Q8_0"),
        ("int8 naive torch (affine) vs Q8_0", "naive int8", "gguf Q8_0"),
        ("int4 g32 packed, eager vs Q4_0", "lowbit int4", "gguf Q4_0"),
        ("int4 g32 packed, compiled vs Q4_0", "lowbit int4 compiled", "gguf Q4_0"),
        ("int4 naive torch (affine+pack) vs Q4_0", "naive int4", "gguf Q4_0"),
    ]
    report = Report()
    for threads in args.threads:
        res = compare(
            cases,
            "gguf Q8_0",
            warmup=args.warmup,
            repeats=args.repeats,
            threads=threads,
            work=w.numel(),
        )
        title = f"{args.size}x{args.size} fp32, torch threads={threads} (gguf-py: numpy, 1 core)"
        rows = [res.row(*p, unit="Mparams/s") for p in pairs]
        text = format_table(rows, command=report.command, title=title)
        report.add(title, text, [asdict(r) for r in rows])
    report.notes = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "gguf": importlib.metadata.version("gguf"),
        "first call incl. torch.compile (s)": f"int8 {compile_int8:.1f}, int4 {compile_int4:.1f}",
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    report.print(as_json=args.json)


if __name__ == "__main__":
    main()
