"""The optional C loops of kernels/_rowquant.c, loaded with ctypes.

Built by ``pip install`` when a C compiler is present (setup.py, optional extension).
``available()`` says whether they loaded; callers keep a torch fallback with the same
numbers, so a missing compiler costs speed, never results.
"""

from __future__ import annotations

import ctypes
from functools import cache

import torch

from lowbit.errors import InvalidInputError
from lowbit.extensions import load_extension

_I64 = ctypes.c_int64
_PTR = ctypes.c_void_p
_INT = ctypes.c_int


@cache
def _library() -> ctypes.CDLL | None:
    lib = load_extension("lowbit.kernels._rowquant")
    if lib is None:
        return None
    lib.lowbit_quantize_rows_int8.restype = _I64
    lib.lowbit_quantize_rows_int8.argtypes = [_PTR, _I64, _I64, _I64, _PTR, _PTR, _PTR]
    lib.lowbit_dequantize_int32.restype = None
    lib.lowbit_dequantize_int32.argtypes = [
        _PTR,
        _I64,
        _I64,
        _PTR,
        _PTR,
        _PTR,
        _PTR,
        _PTR,
        _INT,
        _PTR,
    ]
    return lib


def available() -> bool:
    """True when the compiled loops loaded (else callers use their torch fallback)."""
    return _library() is not None


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def quantize_rows_int8(
    rows: torch.Tensor, zero_point: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """int8 codes (m, k), scales (m, 1) float32 and zero points (m, 1) int32 (None when
    symmetric) of a float32 (m, k) matrix whose rows are contiguous. Symmetric: s =
    max|row| / 127, codes in [-127, 127]; asymmetric: s = (max(row, 0) - min(row, 0)) / 255,
    zp = -128 - round(min / s), codes in [-128, 127]; rounding half to even."""
    lib = _library()
    assert lib is not None, "check native.available() first"
    if not (
        rows.device.type == "cpu"
        and rows.dtype == torch.float32
        and rows.dim() == 2
        and rows.stride(1) == 1
    ):
        raise InvalidInputError("quantize_rows_int8 needs a CPU float32 matrix, rows contiguous")
    m, k = rows.shape
    q = torch.empty((m, k), dtype=torch.int8)
    scale = torch.empty((m, 1), dtype=torch.float32)
    zp = torch.empty((m, 1), dtype=torch.int32) if zero_point else None
    bad = lib.lowbit_quantize_rows_int8(
        rows.data_ptr(), m, k, rows.stride(0), q.data_ptr(), scale.data_ptr(), _ptr(zp)
    )
    if bad:
        raise InvalidInputError(
            f"the input holds NaN or Inf in {bad} of its {m} rows; int8 quantization needs "
            "finite values (check the layer before this one)"
        )
    return q, scale, zp


def dequantize_int32_(
    acc: torch.Tensor,
    row_scale: torch.Tensor,
    col_scale: torch.Tensor,
    bias: torch.Tensor | None,
    relu: bool,
    zero_point: torch.Tensor | None = None,
    col_sum: torch.Tensor | None = None,
) -> torch.Tensor:
    """((float)(acc - zero_point * col_sum) * row_scale) * col_scale (+ bias) (relu),
    written over acc's own memory; returns that memory as float32. acc: contiguous int32
    (m, n); scales and bias contiguous float32 of m, n and n values; zero_point (m values)
    and col_sum (n values, the weight codes summed over k) contiguous int32, or both None."""
    lib = _library()
    assert lib is not None, "check native.available() first"
    m, n = acc.shape
    if not (acc.device.type == "cpu" and acc.dtype == torch.int32 and acc.is_contiguous()):
        raise InvalidInputError("dequantize_int32_ needs a contiguous int32 matrix")
    if (zero_point is None) != (col_sum is None):
        raise InvalidInputError("dequantize_int32_ needs zero_point and col_sum together")
    expected = (
        (row_scale, m, torch.float32),
        (col_scale, n, torch.float32),
        (bias, n, torch.float32),
        (zero_point, m, torch.int32),
        (col_sum, n, torch.int32),
    )
    for t, size, dtype in expected:
        if t is not None and not (t.dtype == dtype and t.is_contiguous() and t.numel() == size):
            raise InvalidInputError(
                "dequantize_int32_ needs contiguous float32 scales and bias, int32 zero "
                "points and column sums, of the matrix's sizes"
            )
    lib.lowbit_dequantize_int32(
        acc.data_ptr(), m, n, row_scale.data_ptr(), _ptr(zero_point), _ptr(col_sum),
        col_scale.data_ptr(), _ptr(bias), int(relu), acc.data_ptr(),
    )  # fmt: skip
    return acc.view(torch.float32)
