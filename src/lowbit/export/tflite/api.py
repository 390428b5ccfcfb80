"""``export_tflite``: a lowbit int8-static CNN as a .tflite file, checked in LiteRT."""

from __future__ import annotations

import logging
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lowbit.atomic import atomic_write_bytes
from lowbit.errors import InvalidInputError, LowbitWarning, require
from lowbit.export.tflite.convert import GraphWriter
from lowbit.export.tflite.flatbuffer import TfliteBuilder
from lowbit.export.tflite.trace import eval_mode, trace
from lowbit.formats.sqnr import sqnr_db

log = logging.getLogger(__name__)

# Below this the file computes something else than lowbit's model, not the same thing with
# other rounding (the acceptance floor of issue 14 for every exported model).
SQNR_FLOOR_DB = 30.0


@dataclass(frozen=True)
class TfliteVerification:
    """How the .tflite, run in ai-edge-litert's interpreter, agreed with lowbit's model.

    Attributes:
        sqnr_db: SQNR of LiteRT's outputs against PyTorch's on the example inputs.
        max_abs_error: largest absolute difference of the outputs.
        detail: one line for the user (what was run, on which inputs).
    """

    sqnr_db: float
    max_abs_error: float
    detail: str


@dataclass(frozen=True)
class TfliteExportResult:
    """What ``export_tflite`` wrote.

    Attributes:
        path: the .tflite file.
        output_bytes: its size on disk.
        op_counts: TFLite builtin operator -> count (CONV_2D, FULLY_CONNECTED, QUANTIZE, ...).
        verification: the LiteRT check, or None with ``verify=False``.
    """

    path: Path
    output_bytes: int
    op_counts: dict[str, int]
    verification: TfliteVerification | None


def _example_tensor(example_inputs: Any) -> torch.Tensor:
    if isinstance(example_inputs, (tuple, list)) and len(example_inputs) == 1:
        example_inputs = example_inputs[0]
    if not isinstance(example_inputs, torch.Tensor) or not example_inputs.is_floating_point():
        raise InvalidInputError(
            "example_inputs must be one float tensor (or a 1-tuple of it), e.g. a batch of "
            f"images [N, C, H, W]; got {type(example_inputs).__name__}"
        )
    return example_inputs.detach().float()


def _build(model: nn.Module, example: torch.Tensor) -> tuple[bytes, dict[str, int]]:
    """The .tflite file of ``model`` (in eval mode) in memory, and its op counts."""
    gm, shapes = trace(model, example)
    builder = TfliteBuilder()
    writer = GraphWriter(gm, shapes, builder)
    writer.write()
    description = f"lowbit int8-static {type(model).__name__}"
    data = builder.finish(writer.inputs, writer.outputs, description)
    return data, dict(builder.op_counts)


def run_tflite(
    model: bytes | str | os.PathLike, inputs: torch.Tensor, *, threads: int | None = None
) -> torch.Tensor:
    """Run a one-input, one-output .tflite (a path or its bytes) in ai-edge-litert's
    interpreter on ``inputs`` (any batch size: the input is resized); returns the output."""
    interpreter_mod = require("ai_edge_litert.interpreter", "litert")
    source = {"model_content": model} if isinstance(model, bytes) else {"model_path": str(model)}
    interpreter = interpreter_mod.Interpreter(**source, num_threads=threads)
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    x = np.ascontiguousarray(inputs.detach().float().numpy())
    if tuple(inp["shape"]) != x.shape:
        interpreter.resize_tensor_input(inp["index"], list(x.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], x)
    interpreter.invoke()
    return torch.from_numpy(interpreter.get_tensor(out["index"]).copy())


def _verify(model: nn.Module, data: bytes, example: torch.Tensor) -> TfliteVerification:
    with torch.no_grad():
        expected = model(example).float()
    got = run_tflite(data, example)
    if got.shape != expected.shape:
        raise InvalidInputError(
            f"the .tflite output has shape {tuple(got.shape)}, lowbit's {tuple(expected.shape)}; "
            "this is an exporter bug: please report it with the model"
        )
    sqnr = sqnr_db(expected, got)
    max_err = (expected - got).abs().max().item()
    detail = (
        f"LiteRT interpreter vs lowbit PyTorch on the example inputs {tuple(example.shape)}: "
        f"SQNR {sqnr:.1f} dB, max abs error {max_err:.4g}"
    )
    if not math.isinf(sqnr) and sqnr < SQNR_FLOOR_DB:
        warnings.warn(f"{detail} (below {SQNR_FLOOR_DB:.0f} dB)", LowbitWarning, stacklevel=3)
    return TfliteVerification(sqnr, max_err, detail)


def export_tflite(
    model: nn.Module, example_inputs: Any, path: str | os.PathLike, *, verify: bool = True
) -> TfliteExportResult:
    """Write ``model`` (lowbit int8-static: QuantConv2d/QuantLinear/QuantAdd in static mode,
    pooling, ReLU, flatten) as an int8 .tflite file at ``path``, atomically.

    Args:
        model: the quantized module tree (e.g. ``lowbit.quantize(cnn, "int8-static",
            calib_data=...)``); its forward is followed with torch.fx.
        example_inputs: one float tensor the model takes (e.g. images [N, C, H, W]); it
            fixes the input's non-batch shape and is what verification runs. The .tflite
            takes the same NCHW float input (any batch size) and gives the same float output.
        path: the .tflite file (replaced atomically; an export that fails leaves no file, or
            the previous one).
        verify: run the file in ai-edge-litert's interpreter on ``example_inputs`` and
            compare with the PyTorch model (SQNR, max abs error; a LowbitWarning below 30 dB).
            The file is written only after this run succeeds.
    Raises:
        InvalidInputError: a layer is float or not int8-static, or a module/op has no
            .tflite form (the message names it).
        MissingDependencyError: ai-edge-litert is missing (``pip install "lowbit[litert]"``).
    """
    example = _example_tensor(example_inputs)
    with eval_mode(model):
        data, op_counts = _build(model, example)
        verification = _verify(model, data, example) if verify else None
    if verification is not None:
        log.info(verification.detail)
    written = atomic_write_bytes(path, data)
    return TfliteExportResult(written, len(data), op_counts, verification)
