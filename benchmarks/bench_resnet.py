"""ResNet-18-shaped CNN, batch 8, 3x224x224: lowbit int8-static vs torch and ONNX Runtime.

Random weights (Kaiming-normal convs) with random, non-trivial BatchNorm statistics and affine
parameters, eval mode (models.make_resnet18). Calibration: 4 batches of 8 random normal images;
the timed input is another random normal batch. Random images are fine for speed; the SQNR
column only says how far each variant's logits move from fp32 on that input.

Cases, timed side by side round-robin: torch fp32 (NCHW, the default), torch fp32
channels_last, torch bf16 channels_last (the fastest torch float variant here; input cast
included), ONNX Runtime fp32, torch.ao FX static int8 (prepare_fx/convert_fx, x86 backend:
the anchor), ONNX Runtime quantize_static (QDQ, per-channel int8 weights, uint8 activations,
MinMax), and lowbit ``quantize(model, "int8-static", calib_data=batches)``.
Acceptance (issue 3): lowbit >= 0.9x the anchor, >= 1.5x ORT QDQ, output SQNR >= 30 dB.

Run:  .venv/bin/python benchmarks/bench_resnet.py [--threads 2] [--json]
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import Report
from harness import add_args
from models import (
    ADD_SOURCE,
    add_model_table,
    bench_cases,
    lowbit_quantize,
    make_resnet18,
    ort_quantize_static,
    ort_session,
    print_model_report,
    quiet_deprecations,
    try_lowbit,
)

ANCHOR = "torch.ao FX static int8"
ORT_QDQ = "ORT quantize_static QDQ per-channel"
LOWBIT = "lowbit int8-static"
CL = torch.channels_last


def lowbit_model(model: nn.Module, calib: list[torch.Tensor]) -> nn.Module:
    """lowbit's case: ``lowbit.quantize(model, "int8-static", calib_data=calib)`` on a copy.

    Raises models.LowbitMissingError while lowbit.quantize does not exist.
    """
    work = copy.deepcopy(model)
    out = lowbit_quantize()(work, "int8-static", calib_data=calib)
    return work if out is None else out  # in-place quantize returns nothing


def torch_ao_fx(model: nn.Module, calib: list[torch.Tensor]) -> nn.Module:
    """torch.ao FX graph-mode static int8: x86 default qconfig, MinMax/histogram observers
    as that qconfig sets them, calibrated on ``calib``; conv-bn-relu fused by prepare_fx."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    with quiet_deprecations():
        prepared = prepare_fx(copy.deepcopy(model), get_default_qconfig_mapping("x86"), (calib[0],))
        with torch.no_grad():
            for xb in calib:
                prepared(xb)
        return convert_fx(prepared)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8, help="images per forward pass")
    parser.add_argument("--calib-batches", type=int, default=4, help="calibration batches")
    add_args(parser, warmup=2, repeats=15)
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.ERROR)  # ORT's quantizer logs advice at WARNING

    model = make_resnet18()
    gen = torch.Generator().manual_seed(1234)
    shape = (args.batch, 3, 224, 224)
    calib = [torch.randn(shape, generator=gen) for _ in range(args.calib_batches)]
    x = torch.randn(shape, generator=gen)
    fx = torch_ao_fx(model, calib)
    lb, lowbit_note, status = try_lowbit(lambda: lowbit_model(model, calib))
    model_cl = copy.deepcopy(model).to(memory_format=CL)
    bf16_cl = copy.deepcopy(model).to(torch.bfloat16).to(memory_format=CL)

    report = Report(checks=[])
    with tempfile.TemporaryDirectory() as tmp:
        onnx_fp32, onnx_q, notes = ort_quantize_static(model, calib, Path(tmp), "resnet")
        xn = x.numpy()
        for threads in args.threads:
            ort_fp32, ort_q = ort_session(onnx_fp32, threads), ort_session(onnx_q, threads)
            fns = {
                "torch fp32": lambda: model(x),
                "torch fp32 channels_last": lambda: model_cl(x.contiguous(memory_format=CL)),
                "torch bf16 channels_last": (
                    lambda: bf16_cl(x.to(torch.bfloat16, memory_format=CL))
                ),
                "ORT fp32": lambda s=ort_fp32: s.run(None, {"x": xn})[0],
                ANCHOR: lambda: fx(x),
                ORT_QDQ: lambda s=ort_q: s.run(None, {"x": xn})[0],
            }
            if lb is not None:
                fns[LOWBIT] = lambda: lb(x)
            with torch.inference_mode(), quiet_deprecations():
                res, cases, calls = bench_cases(
                    fns, ref=model(x), fp32="torch fp32", threads=threads,
                    warmup=args.warmup, repeats=args.repeats,
                )  # fmt: skip
            title = f"ResNet-18-shaped CNN, batch {args.batch}x3x224x224, {threads} threads"
            add_model_table(
                report, res, cases, title=title, anchor=ANCHOR, calls=calls,
                lowbit=None if lb is None else LOWBIT,
                targets=[(ANCHOR, 0.9), (ORT_QDQ, 1.5)], min_sqnr=30.0,
            )  # fmt: skip
    notes.update(
        {
            "residual add": ADD_SOURCE,
            "data": f"random normal images; {args.calib_batches} calibration batches of "
            f"{args.batch}, timed on another batch",
        }
    )
    print_model_report(report, notes, args, lowbit_note)
    return status


if __name__ == "__main__":
    sys.exit(main())
