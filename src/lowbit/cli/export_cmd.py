"""``lowbit export``: a model in, a file another runtime runs out (GGUF for llama.cpp, ONNX for
ONNX Runtime / OpenVINO / TensorRT, .tflite for LiteRT)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lowbit.cli.output import print_json, print_table
from lowbit.errors import InvalidInputError


def export_model(
    model: Annotated[
        str,
        typer.Argument(
            help="gguf: a GGUF file or Hugging Face folder (llama family or BERT); onnx: a "
            "lowbit save folder or a Hugging Face folder; tflite: digits (the demo CNN)."
        ),
    ],
    out: Annotated[Path, typer.Option(help="File to write (replaced atomically).")],
    type_: Annotated[
        str | None,
        typer.Option(
            "--type", help="gguf: q8_0, q4_0, q4_1, q5_0, q5_1, q4_k_m, ..., f16, bf16, f32."
        ),
    ] = None,
    format_: Annotated[str, typer.Option("--format", help="gguf, onnx or tflite.")] = "gguf",
    target: Annotated[
        str,
        typer.Option(
            help="onnx: ort (ONNX Runtime), openvino (per-token int8 as elementwise ops) or "
            "tensorrt (symmetric int8)."
        ),
    ] = "ort",
    opset: Annotated[
        int | None,
        typer.Option(help="onnx: 21 writes standard block DequantizeLinear, not MatMulNBits."),
    ] = None,
    recipe: Annotated[
        str | None,
        typer.Option(help="onnx/tflite: quantize a float MODEL with this preset first."),
    ] = None,
    verify: Annotated[
        bool, typer.Option(help="onnx/tflite: run the file and compare with lowbit's outputs.")
    ] = True,
    skip: Annotated[
        list[str] | None,
        typer.Option(
            help="onnx: a layer name or pattern (fnmatch) to leave in float when ONNX cannot "
            "express its format; repeat for several."
        ),
    ] = None,
    method: Annotated[
        str, typer.Option(help="How values are chosen: rtn, or a calibrated method.")
    ] = "rtn",
    calib: Annotated[
        Path | None,
        typer.Option(
            help="Calibration text file, for calibrated methods and onnx --recipe (default: "
            "lowbit's bundled text)."
        ),
    ] = None,
    imatrix: Annotated[
        Path | None, typer.Option(help="llama.cpp importance-matrix file (--method imatrix).")
    ] = None,
    calib_windows: Annotated[
        int | None,
        typer.Option(
            help="Calibration windows for gptq/awq (default 16; onnx --recipe: 128).", min=1
        ),
    ] = None,
    seq_len: Annotated[
        int, typer.Option(help="Tokens per calibration window (gptq/awq, onnx --recipe).", min=8)
    ] = 512,
    target_bpw: Annotated[
        float | None,
        typer.Option(
            help="gguf: mixed precision: a block type per tensor (from --candidates, by measured "
            "sensitivity) so the whole file takes at most this many bits per weight; --type "
            "then sets the other tensors' types (default q4_k_m)."
        ),
    ] = None,
    target_size: Annotated[
        str | None, typer.Option(help="gguf: mixed precision within a file size, e.g. 90MB.")
    ] = None,
    candidates: Annotated[
        str | None,
        typer.Option(
            help="gguf mixed precision: block types a tensor may take, comma-separated "
            "(default: q2_k,q3_k,q4_0,iq4_nl,q4_1,q4_k,q5_0,q5_1,q5_k,q6_k,q8_0)."
        ),
    ] = None,
    json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
) -> None:
    """Export MODEL to a GGUF file of --type (as llama-quantize would: types, metadata, order),
    an ONNX file, or a .tflite file."""
    if format_ == "onnx":
        from lowbit.cli.export_onnx import TextCalibration, export_onnx_command

        calibration = TextCalibration(calib, calib_windows or TextCalibration.windows, seq_len)
        export_onnx_command(model, out, target=target, opset=opset, recipe=recipe,
                            verify=verify, json=json, skip=tuple(skip or ()),
                            calibration=calibration)  # fmt: skip
        return
    if format_ == "tflite":
        from lowbit.cli.export_tflite import export_tflite_command

        export_tflite_command(model, out, recipe=recipe, verify=verify, json=json)
        return
    if format_ != "gguf":
        raise InvalidInputError(f"--format {format_!r} is not supported; use gguf, onnx or tflite")
    if skip:
        raise InvalidInputError("--skip is for --format onnx; drop it for gguf")
    target = _gguf_target(target_bpw, target_size)
    if type_ is None and target is None:
        raise InvalidInputError("--format gguf needs --type (q8_0, q4_0, q4_k_m, ..., f16)")
    type_ = type_ or "q4_k_m"
    from lowbit.export import export_gguf
    from lowbit.export.gguf_mixed import DEFAULT_GGUF_CANDIDATES

    names = DEFAULT_GGUF_CANDIDATES if candidates is None else tuple(candidates.split(","))
    result = export_gguf(
        model, out, type_.lower(), method=method, calib=calib, imatrix=imatrix,
        seq_len=seq_len, calib_windows=calib_windows, target=target, candidates=names,
    )  # fmt: skip
    doc = {
        "model": model,
        "out": str(result.path),
        "type": type_.lower(),
        "method": method,
        "input_bytes": result.input_bytes,
        "output_bytes": result.output_bytes,
        "bits_per_weight": round(result.bits_per_weight, 3),
        "tensor_types": result.type_counts,
        "mixed_precision": result.mixed,
    }
    if json:
        print_json(doc)
        return
    rows = [[t, n] for t, n in sorted(result.type_counts.items())]
    print_table(f"{result.path.name} ({type_.lower()}, {method})", ["type", "tensors"], rows)
    typer.echo(
        f"input {result.input_bytes / 1e6:.1f} MB → output {result.output_bytes / 1e6:.1f} MB, "
        f"{result.bits_per_weight:.2f} bits per weight (whole file / weights)"
    )


def _gguf_target(target_bpw: float | None, target_size: str | None) -> object | None:
    """The mixed-precision target the options name, or None."""
    if target_bpw is None and target_size is None:
        return None
    from lowbit.export.gguf_mixed import GGUFTarget
    from lowbit.streaming import parse_size

    size = None if target_size is None else parse_size(target_size)
    return GGUFTarget(bits_per_weight=target_bpw, max_bytes=size)
