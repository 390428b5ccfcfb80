"""``lowbit demo``: the digits CNN quantized with every preset, static int8 with two
observers, and QAT int8; accuracy, bytes and latency side by side with fp32."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lowbit.demo.digits import DigitsSplit, load_digits_split, train, trained_digits_cnn
from lowbit.eval.latency import median_ratio, time_interleaved
from lowbit.eval.metrics import accuracy
from lowbit.eval.size import model_nbytes
from lowbit.progress import track
from lowbit.recipes import convert, prepare_qat, quantize
from lowbit.reports import Column, ComparisonReport

log = logging.getLogger(__name__)

LATENCY_BATCH = 64
CALIB_SAMPLES = 512
QAT_EPOCHS = 3


@dataclass(frozen=True)
class Method:
    """A row of the demo: its label and how to build the model from the fp32 one."""

    label: str
    build: Callable[[nn.Module, DigitsSplit, list[torch.Tensor]], nn.Module]


def _preset(name: str) -> Callable[[nn.Module, DigitsSplit, list[torch.Tensor]], nn.Module]:
    return lambda model, split, calib: quantize(model, name, calib_data=calib)


def _qat(model: nn.Module, split: DigitsSplit, calib: list[torch.Tensor]) -> nn.Module:
    prepared = prepare_qat(model, "int8-qat", example_inputs=calib[0])
    train(prepared, split.x_train, split.y_train, epochs=QAT_EPOCHS, lr=3e-4, seed=1)
    return convert(prepared, example_inputs=calib[0])


METHODS: list[Method] = [
    Method("fp32", lambda model, split, calib: model),
    Method("fp16", _preset("fp16")),
    Method("bf16", _preset("bf16")),
    Method("int8-dynamic", _preset("int8-dynamic")),
    Method("int8-static (minmax)", _preset("int8-static")),
    Method("int8-static (entropy)", _preset("int8-static:entropy")),
    Method(f"int8 QAT ({QAT_EPOCHS} epochs)", _qat),
    Method("w8a16", _preset("w8a16")),
    Method("w4a16-g32", _preset("w4a16-g32")),
    Method("w4a16-g128", _preset("w4a16-g128")),
    Method("nf4", _preset("nf4")),
    Method("ternary", _preset("ternary")),
    Method("binary", _preset("binary")),
]

COLUMNS = [
    Column("method", "method"),
    Column("accuracy", "accuracy %", lambda v: f"{v:.2f}"),
    Column("accuracy_change", "change vs fp32", lambda v: f"{v:+.2f}"),
    Column("size_bytes", "size (bytes)", lambda v: f"{v:,}"),
    Column("size_ratio", "size vs fp32", lambda v: f"{v:.3f}x"),
    Column("latency_ms", f"latency ms (batch {LATENCY_BATCH})", lambda v: f"{v:.3f}"),
    Column("speed", "speed vs fp32", lambda v: f"{v:.2f}x"),
]


def run_demo(threads: int = 2, repeats: int = 30, seed: int = 0) -> ComparisonReport:
    """Train (seeded) the digits CNN, build every variant, measure them side by side."""
    torch.manual_seed(seed)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        split = load_digits_split()
        fp32 = trained_digits_cnn(split, seed=seed)
        gen = torch.Generator().manual_seed(seed)
        picks = torch.randperm(len(split.x_train), generator=gen)[:CALIB_SAMPLES]
        calib = list(split.x_train[picks].split(64))
        models: dict[str, nn.Module] = {}
        for method in track(METHODS, "quantizing the digits CNN", total=len(METHODS)):
            models[method.label] = method.build(fp32, split, calib)
        x = split.x_test[:LATENCY_BATCH]
        samples = time_interleaved(
            {label: (lambda m=m: m(x)) for label, m in models.items()},
            repeats=repeats,
            threads=threads,
        )
    finally:
        torch.set_num_threads(previous_threads)
    report = ComparisonReport(
        f"lowbit demo: CNN on sklearn digits ({len(split.y_test)} test images), {threads} threads",
        COLUMNS,
    )
    base_acc = accuracy(fp32, split.x_test, split.y_test)
    base_bytes = model_nbytes(fp32)
    for label, model in models.items():
        acc = accuracy(model, split.x_test, split.y_test)
        nbytes = model_nbytes(model)
        speed, lo, hi = median_ratio(samples["fp32"], samples[label])
        report.rows.append(
            {
                "method": label,
                "accuracy": acc,
                "accuracy_change": acc - base_acc,
                "size_bytes": nbytes,
                "size_ratio": nbytes / base_bytes,
                "latency_ms": 1000 * sorted(samples[label])[len(samples[label]) // 2],
                "speed": speed,
                "speed_min": lo,
                "speed_max": hi,
                "notes": getattr(model, "lowbit_notes", []),
            }
        )
    report.notes.extend(
        [
            "One test image is 0.28 points: this task shows that each flow works, not which "
            "method is best.",
            "Latency: all variants timed interleaved round-robin in one process after warm-up; "
            "speed is the median per-round ratio to fp32.",
            "Size: bytes of every tensor the model needs to run (what lowbit.save stores).",
        ]
    )
    return report


def write_demo_report(report: ComparisonReport, folder: str | Path) -> list[Path]:
    """report.md, report.json, report.html and the accuracy-vs-size plot."""
    plot: dict[str, Any] = {
        "x": "size_bytes",
        "y": "accuracy",
        "label": "method",
        "xlabel": "size (bytes, log scale)",
        "ylabel": "test accuracy %",
    }
    return report.write(folder, plot=plot)
