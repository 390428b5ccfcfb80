"""The optional C loops of kernels/_rowquant.c, loaded with ctypes.

Built by ``pip install`` when a C compiler is present (setup.py, optional extension).
``available()`` says whether they loaded; callers keep a torch fallback with the same
numbers, so a missing compiler costs speed, never results.
"""

from __future__ import annotations

import ctypes
import importlib.util
from functools import cache

import torch

from lowbit.errors import InvalidInputError

_I64 = ctypes.c_int64
_PTR = ctypes.c_void_p
_INT = ctypes.c_int


@cache
def _library() -> ctypes.CDLL | None:
    spec = importlib.util.find_spec("lowbit.kernels._rowquant")
    if spec is None or spec.origin is None:
        return None
    try:
        lib = ctypes.CDLL(spec.origin)
    except OSError:
        return None
    lib.lowbit_quantize_rows_int8.restype = _I64
    lib.lowbit_quantize_rows_int8.argtypes = [_PTR, _I64, _I64, _I64, _PTR, _PTR]
    lib.lowbit_dequantize_int32.restype = None
    lib.lowbit_dequantize_int32.argtypes = [_PTR, _I64, _I64, _PTR, _PTR, _PTR, _INT, _PTR]
    return lib


def available() -> bool:
    """True when the compiled loops loaded (else callers use their torch fallback)."""
    return _library() is not None


def quantize_rows_int8(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 codes (m, k) and scales (m, 1) of a float32 (m, k) matrix whose rows
    are contiguous: s = max|row| / 127 (1 for a zero row), q = round-half-even(row / s)."""
    lib = _library()
    assert lib is not None, "check native.available() first"
    if not (rows.device.type == "cpu" and rows.dtype == torch.float32 and rows.dim() == 2
            and rows.stride(1) == 1):  # fmt: skip
        raise InvalidInputError("quantize_rows_int8 needs a CPU float32 matrix, rows contiguous")
    m, k = rows.shape
    q = torch.empty((m, k), dtype=torch.int8)
    scale = torch.empty((m, 1), dtype=torch.float32)
    bad = lib.lowbit_quantize_rows_int8(
        rows.data_ptr(),
        m,
        k,
        rows.stride(0),
        q.data_ptr(),
        scale.data_ptr(),
    )
    if bad:
        raise InvalidInputError(
            f"the input holds NaN or Inf in {bad} of its {m} rows; int8 quantization needs "
            "finite values (check the layer before this one)"
        )
    return q, scale


def dequantize_int32_(
    acc: torch.Tensor,
    row_scale: torch.Tensor,
    col_scale: torch.Tensor,
    bias: torch.Tensor | None,
    relu: bool,
) -> torch.Tensor:
    """((float)acc * row_scale) * col_scale (+ bias) (relu), written over acc's own memory;
    returns that memory as float32. acc: contiguous int32 (m, n); the scales and bias are
    contiguous float32 of m, n and n values."""
    lib = _library()
    assert lib is not None, "check native.available() first"
    m, n = acc.shape
    if not (acc.device.type == "cpu" and acc.dtype == torch.int32 and acc.is_contiguous()):
        raise InvalidInputError("dequantize_int32_ needs a contiguous int32 matrix")
    for t, size in ((row_scale, m), (col_scale, n), (bias, n)):
        fits = t is None or (t.dtype == torch.float32 and t.is_contiguous() and t.numel() == size)
        if not fits:
            raise InvalidInputError("dequantize_int32_ needs contiguous float32 scales and bias")
    lib.lowbit_dequantize_int32(
        acc.data_ptr(), m, n, row_scale.data_ptr(), col_scale.data_ptr(),
        None if bias is None else bias.data_ptr(), int(relu), acc.data_ptr(),
    )  # fmt: skip
    return acc.view(torch.float32)
