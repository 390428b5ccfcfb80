"""The weights of an ONNX file, by the op that uses them, for ``lowbit inspect FILE.onnx``:
float weights of MatMul / Gemm / Conv as (out, in, ...) tensors, and the quantized ones
(QDQ's DequantizeLinear, com.microsoft MatMulNBits, GatherBlockQuantized) with their stored
bits per weight."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lowbit.errors import InvalidInputError, require

_FLOAT_OPS = {"MatMul": 1, "Gemm": 1, "Conv": 1}  # op -> index of its weight input
# op -> index of its stored (quantized) weight input
_QUANTIZED_OPS = {
    "DequantizeLinear": 0,
    "MatMulNBits": 1,
    "GatherBlockQuantized": 0,
    "MatMulInteger": 1,
    "DynamicQuantizeMatMul": 1,
}
_FOUR_BIT = (21, 22)  # onnx.TensorProto.UINT4, INT4


@dataclass(frozen=True)
class OnnxWeight:
    """One weight: its initializer name, the op using it, and either the float tensor in
    (out, in, ...) order or, for a stored quantized weight, its bits per weight (codes and
    the op's own scale and zero point inputs; a scale applied by a later Mul not counted)."""

    name: str
    op: str
    weight: torch.Tensor | None
    stored_bits: float | None = None


def _as_rows(op: str, array: np.ndarray, trans_b: bool) -> torch.Tensor:
    """The weight in (out, in, ...) order: MatMul's B is (in, out); Gemm's unless transB."""
    t = torch.from_numpy(np.array(array, dtype=np.float32))
    if op == "MatMul" or (op == "Gemm" and not trans_b):
        return t.T.contiguous() if t.dim() == 2 else t
    return t


def onnx_weights(path: Path) -> list[OnnxWeight]:
    """The weights of the ONNX file at ``path`` (external data beside it read too)."""
    onnx = require("onnx", "onnx")
    numpy_helper = require("onnx.numpy_helper", "onnx")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError, ValueError, OSError by cause
        raise InvalidInputError(
            f"{path} is not a readable ONNX file ({exc}); check the file"
        ) from exc
    inits = {i.name: i for i in model.graph.initializer}
    found: list[OnnxWeight] = []
    seen: set[str] = set()
    for node in model.graph.node:
        if node.op_type in _FLOAT_OPS and len(node.input) > 1 and node.input[1] in inits:
            name = node.input[1]
            array = numpy_helper.to_array(inits[name])
            if name in seen or array.ndim < 2 or not np.issubdtype(array.dtype, np.floating):
                continue
            trans_b = any(a.name == "transB" and a.i for a in node.attribute)
            found.append(OnnxWeight(name, node.op_type, _as_rows(node.op_type, array, trans_b)))
            seen.add(name)
        elif node.op_type in _QUANTIZED_OPS:
            index = _QUANTIZED_OPS[node.op_type]
            name = node.input[index] if len(node.input) > index else ""
            if name in seen or name not in inits:
                continue
            stored = numpy_helper.to_array(inits[name])
            params = [i for i in node.input[index:] if i in inits]  # codes, scales, zero points
            nbytes = sum(_nbytes(numpy_helper, inits[i]) for i in params)
            bits = 8 * nbytes / _elements(node, stored)
            found.append(OnnxWeight(name, node.op_type, None, bits))
            seen.add(name)
    return found


def _nbytes(numpy_helper, tensor) -> int:
    """Stored bytes of an initializer (INT4/UINT4 hold two values per byte)."""
    array = numpy_helper.to_array(tensor)
    return (array.size + 1) // 2 if tensor.data_type in _FOUR_BIT else array.nbytes


def _elements(node, stored: np.ndarray) -> int:
    """Weights a quantized initializer holds (MatMulNBits packs K/block_size blocks of
    bits·block_size/8 bytes per output row: N x K values)."""
    if node.op_type == "MatMulNBits":
        attrs = {a.name: a.i for a in node.attribute}
        return int(attrs["N"]) * int(attrs["K"])
    if node.op_type == "GatherBlockQuantized":
        bits = {a.name: a.i for a in node.attribute}.get("bits", 4)
        return stored.size * (8 // bits) if stored.dtype == np.uint8 else stored.size
    return stored.size
