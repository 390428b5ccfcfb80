"""ggml's reference quantizers in C (formats/blocks/_ggml_ref.c, copied from llama.cpp
0c1e570), loaded with ctypes: the fast path of ``BlockCodec.quantize`` without an importance
vector.

The torch codecs stay the reference (and the path with an imatrix, and the one used when the
extension was not built): both give llama-quantize's bytes, and tests compare them on real
weights. The C path runs one ggml call per chunk of rows, the chunks spread over torch's
thread count as llama-quantize spreads them over its threads (ctypes releases the GIL).
"""

from __future__ import annotations

import ctypes
from concurrent.futures import ThreadPoolExecutor
from functools import cache

import torch

from lowbit.errors import UnsupportedFormatError
from lowbit.extensions import load_extension

# values per call: small enough to balance the threads, large enough that a call's overhead
# (~2 us through ctypes) is nothing next to its work
_CHUNK_VALUES = 1 << 16


@cache
def _library() -> ctypes.CDLL | None:
    lib = load_extension("lowbit.formats.blocks._ggml_ref")
    if lib is not None:
        lib.lowbit_ggml_quantize_ref.restype = ctypes.c_int
        lib.lowbit_ggml_quantize_ref.argtypes = [
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_int64,
        ]
    return lib


def available() -> bool:
    """True when the C quantizers loaded (else BlockCodec.quantize uses its torch path)."""
    return _library() is not None


def quantize_rows(
    ggml_type: int, x: torch.Tensor, row_bytes: int, threads: int | None = None
) -> torch.Tensor:
    """ggml's quantize_<type> without quant_weights: float32 (rows, K), contiguous, K a
    multiple of the type's block size (the caller checks) -> uint8 (rows, row_bytes).
    threads: how many threads share the rows (default: torch.get_num_threads())."""
    lib = _library()
    assert lib is not None, "check native.available() first"
    rows, k = x.shape
    out = torch.empty((rows, row_bytes), dtype=torch.uint8)
    step = max(1, _CHUNK_VALUES // k)
    starts = range(0, rows, step)

    def run(r0: int) -> None:
        n = min(step, rows - r0)
        src = x.data_ptr() + r0 * k * 4
        dst = out.data_ptr() + r0 * row_bytes
        if lib.lowbit_ggml_quantize_ref(ggml_type, src, dst, n * k):
            raise UnsupportedFormatError(f"ggml type {ggml_type} has no C quantizer")

    workers = min(threads or torch.get_num_threads(), len(starts))
    if workers <= 1:
        for r0 in starts:
            run(r0)
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(run, starts))
    return out
