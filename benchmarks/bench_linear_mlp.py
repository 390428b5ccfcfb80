"""Linear-heavy MLP (1024-4096-1024, random init): lowbit int8-dynamic vs torch and ONNX Runtime.

Cases, timed side by side round-robin at batch 1 and 32: torch fp32, torch bf16 (input cast
included), ONNX Runtime fp32, torch.ao ``quantize_dynamic`` per-tensor (its default) and
per-channel (the anchor: same granularity as lowbit), ONNX Runtime ``quantize_dynamic``
(per-channel int8 weights), and lowbit ``quantize(model, "int8-dynamic")``.
Acceptance (issue 3): lowbit >= 0.9x the anchor and >= 3x torch bf16. Every case also shows
its output SQNR vs fp32 on the timed input (random normal activations).

Run:  .venv/bin/python benchmarks/bench_linear_mlp.py [--batch 1 32] [--threads 2] [--json]
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
    add_model_table,
    bench_cases,
    export_onnx,
    lowbit_quantize,
    make_mlp,
    onnx_op_counts,
    ort_session,
    print_model_report,
    quiet_deprecations,
    try_lowbit,
)

ANCHOR = "torch.ao quantize_dynamic per-channel"
LOWBIT = "lowbit int8-dynamic"


def lowbit_model(model: nn.Module, calib: list[torch.Tensor]) -> nn.Module:
    """lowbit's case: ``lowbit.quantize(model, "int8-dynamic")`` on a copy of the fp32 model.

    Raises models.LowbitMissingError while lowbit.quantize does not exist. ``calib`` is unused by
    the dynamic recipe; it is here so every model benchmark plugs lowbit in the same way.
    """
    del calib
    work = copy.deepcopy(model)
    out = lowbit_quantize()(work, "int8-dynamic")
    return work if out is None else out  # in-place quantize returns nothing


def torch_ao_dynamic(model: nn.Module, per_channel: bool) -> nn.Module:
    """torch.ao eager ``quantize_dynamic`` of every nn.Linear (qint8 weights), x86 engine."""
    from torch.ao.quantization import (
        default_dynamic_qconfig,
        per_channel_dynamic_qconfig,
        quantize_dynamic,
    )

    torch.backends.quantized.engine = "x86"
    qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
    with quiet_deprecations():
        return quantize_dynamic(copy.deepcopy(model), {nn.Linear: qconfig}, dtype=torch.qint8)


def ort_models(model: nn.Module, d: int, tmp: Path) -> tuple[Path, Path, dict[str, str]]:
    """fp32 ONNX export (+ ORT's quant_pre_process) and its ORT ``quantize_dynamic`` version
    (per-channel QInt8 weights); notes say which exporter ran and what the quantizer made."""
    from onnxruntime.quantization import QuantType, quant_pre_process, quantize_dynamic

    raw, fp32, q = tmp / "mlp_raw.onnx", tmp / "mlp.onnx", tmp / "mlp_qdyn.onnx"
    exporter = export_onnx(model, torch.randn(2, d), raw)
    quant_pre_process(str(raw), str(fp32))
    quantize_dynamic(fp32, q, weight_type=QuantType.QInt8, per_channel=True)
    return fp32, q, {"onnx exporter": exporter, "ORT quantize_dynamic graph": onnx_op_counts(q)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 32], help="batch sizes")
    add_args(parser, warmup=5, repeats=60)
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.ERROR)  # ORT's quantizer logs advice at WARNING

    model = make_mlp()
    d = model.fc1.in_features
    calib = [torch.randn(32, d) for _ in range(4)]
    qmodels = {
        "torch.ao quantize_dynamic per-tensor": torch_ao_dynamic(model, per_channel=False),
        ANCHOR: torch_ao_dynamic(model, per_channel=True),
    }
    lb, lowbit_note, status = try_lowbit(lambda: lowbit_model(model, calib))
    if lb is not None:
        qmodels[LOWBIT] = lb
    bf16 = copy.deepcopy(model).to(torch.bfloat16)

    report = Report(checks=[])
    with tempfile.TemporaryDirectory() as tmp:
        onnx_fp32, onnx_q, notes = ort_models(model, d, Path(tmp))
        for threads in args.threads:
            ort_fp32, ort_q = ort_session(onnx_fp32, threads), ort_session(onnx_q, threads)
            for batch in args.batch:
                x = torch.randn(batch, d)
                xn = x.numpy()
                fns = {
                    "torch fp32": lambda x=x: model(x),
                    "torch bf16": lambda x=x: bf16(x.to(torch.bfloat16)),
                    "ORT fp32": lambda xn=xn, s=ort_fp32: s.run(None, {"x": xn})[0],
                    **{name: (lambda x=x, m=m: m(x)) for name, m in qmodels.items()},
                    "ORT quantize_dynamic per-channel": (
                        lambda xn=xn, s=ort_q: s.run(None, {"x": xn})[0]
                    ),
                }
                with torch.inference_mode(), quiet_deprecations():
                    res, cases, calls = bench_cases(
                        fns, ref=model(x), fp32="torch fp32", threads=threads,
                        warmup=args.warmup, repeats=args.repeats,
                    )  # fmt: skip
                title = f"MLP {d}-{model.fc1.out_features}-{d}, batch {batch}, {threads} threads"
                add_model_table(
                    report, res, cases, title=title, anchor=ANCHOR, calls=calls,
                    lowbit=None if lb is None else LOWBIT,
                    targets=[(ANCHOR, 0.9), ("torch bf16", 3.0)],
                )  # fmt: skip
    print_model_report(report, notes, args, lowbit_note)
    return status


if __name__ == "__main__":
    sys.exit(main())
