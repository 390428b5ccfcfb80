"""lowbit's int8-static ONNX (QDQ) against ONNX Runtime's own quantize_static, in ONNX Runtime
and in OpenVINO: the digits CNN (real data, batch 64) and the ResNet-18-shaped CNN (batch 8,
3x224x224, random weights), side by side in one run.

Both quantized graphs see the same calibration batches: lowbit ``quantize(model,
"int8-static", calib_data=calib)`` then ``lowbit.export_onnx``; ORT ``quant_pre_process`` +
``quantize_static`` (QDQ, per-channel int8 weights, uint8 activations, MinMax) of torch's fp32
export. Accuracy: the digits test split (360 images) for every case; ResNet: output SQNR
against torch fp32 (random images, so only a fidelity figure). OpenVINO runs the ONNX files on
CPU with INFERENCE_PRECISION_HINT f32 and with bf16 (the CPU plugin's default here).
Acceptance (issue 14): lowbit QDQ in ORT no slower than ORT's quantize_static model (speed
ratio >= 1/1.05) and at least as accurate; it also runs in OpenVINO.

Run:  .venv/bin/python benchmarks/bench_onnx_cnn.py [--threads 2] [--json]
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import Report, markdown_table
from harness import add_args
from models import (
    add_model_table,
    as_tensor,
    bench_cases,
    make_resnet18,
    onnx_op_counts,
    ort_quantize_static,
    ort_session,
    print_model_report,
    quiet_deprecations,
)

import lowbit
from lowbit.demo.digits import load_digits_split, trained_digits_cnn
from lowbit.export.onnx.runtime import openvino_runner

ORT_QDQ = "ORT quantize_static QDQ (ORT)"
LOWBIT = "lowbit QDQ (ORT)"
Runner = Callable[[torch.Tensor], object]


def lowbit_qdq(model: nn.Module, calib: list[torch.Tensor], path: Path) -> tuple[nn.Module, str]:
    """lowbit int8-static on ``calib``, exported to ``path``; (quantized model, note)."""
    quantized = lowbit.quantize(copy.deepcopy(model), "int8-static", calib_data=calib)
    result = lowbit.export_onnx(quantized, calib[0], path)
    check = result.verification
    note = f"{onnx_op_counts(path)}; ORT vs lowbit PyTorch SQNR {check.sqnr_db:.1f} dB"
    return quantized, note


def runners(
    model: nn.Module, quantized: nn.Module, files: dict[str, Path], threads: int
) -> dict[str, Runner]:
    """Every case as a function of a float batch: torch, ORT and OpenVINO over the files."""
    out: dict[str, Runner] = {"torch fp32": model, "lowbit int8-static (PyTorch)": quantized}
    for label, path in files.items():
        session = ort_session(path, threads)
        name = session.get_inputs()[0].name
        out[f"{label} (ORT)"] = lambda x, s=session, n=name: s.run(None, {n: x.numpy()})[0]
    for label, path in files.items():
        for precision in ("f32", "bf16"):
            run = openvino_runner(path, precision=precision, threads=threads)
            out[f"{label} (OpenVINO {precision})"] = lambda x, r=run: r(x.numpy())
    return out


def accuracy(run: Runner, x: torch.Tensor, y: torch.Tensor, batch: int = 64) -> float:
    """Top-1 accuracy (%) of ``run`` on (x, y), in batches of ``batch``."""
    correct = 0
    for xb, yb in zip(x.split(batch), y.split(batch), strict=True):
        correct += int((as_tensor(run(xb)).argmax(-1) == yb).sum())
    return 100.0 * correct / len(y)


def bench_model(
    report: Report, title: str, model: nn.Module, calib: list[torch.Tensor], x: torch.Tensor,
    args, tmp: Path, labelled: tuple[torch.Tensor, torch.Tensor] | None,
) -> dict[str, str]:  # fmt: skip
    """One model: build both quantized files, then a speed table per thread count and (with
    labelled data) an accuracy table. Returns notes."""
    stem = title.split()[0].lower()
    ort_fp32, ort_q, notes = ort_quantize_static(model, calib, tmp, stem)
    lowbit_file = tmp / f"{stem}_lowbit.onnx"
    quantized, lowbit_note = lowbit_qdq(model, calib, lowbit_file)
    notes = {f"{stem}: {k}": v for k, v in notes.items()}
    notes[f"{stem}: lowbit graph"] = lowbit_note
    files = {
        "fp32": ort_fp32,
        "ORT quantize_static QDQ": ort_q,
        "lowbit QDQ": lowbit_file,
    }
    for threads in args.threads:
        cases = runners(model, quantized, files, threads)
        with torch.inference_mode(), quiet_deprecations():
            res, timed, calls = bench_cases(
                {k: (lambda f=f: f(x)) for k, f in cases.items()}, ref=model(x),
                fp32="torch fp32", threads=threads, warmup=args.warmup, repeats=args.repeats,
            )  # fmt: skip
        add_model_table(
            report, res, timed, title=f"{title}, {threads} threads", anchor=ORT_QDQ,
            calls=calls, lowbit=LOWBIT, targets=[(ORT_QDQ, 1 / 1.05)], min_sqnr=30.0,
        )  # fmt: skip
        if labelled is not None and threads == args.threads[0]:
            with torch.inference_mode(), quiet_deprecations():
                acc = {name: accuracy(run, *labelled) for name, run in cases.items()}
            rows = [[name, f"{a:.2f}"] for name, a in acc.items()]
            report.add(
                f"{title}: accuracy on the test split",
                markdown_table(["case", "accuracy %"], rows, title=f"{title}: accuracy"),
                [{"case": n, "accuracy": a} for n, a in acc.items()],
            )
            verdict = "PASS" if acc[LOWBIT] >= acc[ORT_QDQ] else "FAIL"
            report.checks.append(
                f"{verdict}: {title}: {LOWBIT} accuracy {acc[LOWBIT]:.2f}% vs {ORT_QDQ} "
                f"{acc[ORT_QDQ]:.2f}% (target: at least as accurate)"
            )
    return notes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["digits", "resnet"])
    add_args(parser, warmup=3, repeats=15)
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.ERROR)  # ORT's quantizer logs advice at WARNING
    report = Report(checks=[])
    notes: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        if "digits" in args.models:
            split = load_digits_split()
            model = trained_digits_cnn(split).eval()
            gen = torch.Generator().manual_seed(0)
            picks = torch.randperm(len(split.x_train), generator=gen)[:512]
            calib = list(split.x_train[picks].split(64))  # as lowbit demo calibrates
            notes |= bench_model(
                report, "Digits CNN, batch 64x1x8x8", model, calib, split.x_test[:64], args,
                Path(tmp), (split.x_test, split.y_test),
            )  # fmt: skip
        if "resnet" in args.models:
            model = make_resnet18()
            gen = torch.Generator().manual_seed(1234)
            calib = [torch.randn(8, 3, 224, 224, generator=gen) for _ in range(4)]
            x = torch.randn(8, 3, 224, 224, generator=gen)
            notes |= bench_model(
                report, "ResNet-18-shaped CNN, batch 8x3x224x224", model, calib, x, args,
                Path(tmp), None,
            )  # fmt: skip
    print_model_report(report, notes, args, None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
