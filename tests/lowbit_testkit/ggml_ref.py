"""ctypes access to llama.cpp's ggml C reference (libggml-base.so), the oracle of the GGUF
block codec tests and of benchmarks/bench_gguf_codecs.py.

The library is looked up in $LOWBIT_LLAMA_CPP_DIR (a build folder, searched recursively),
then in ~/.cache/lowbit/llama.cpp-0c1e570 (what `make llama-tools` builds). Build only the
library with:
    cmake -S vendor/llama.cpp -B BUILD -DBUILD_SHARED_LIBS=ON -DLLAMA_CURL=OFF
    cmake --build BUILD --target ggml-base -j2
(vendor/llama.cpp of the llama-cpp-python==0.3.36 sdist, llama.cpp commit 0c1e570).
"""

from __future__ import annotations

import ctypes
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

DEFAULT_DIR = Path.home() / ".cache" / "lowbit" / "llama.cpp-0c1e570"
LLAMA_CPP_COMMIT = "0c1e570"


class GGMLMissingError(RuntimeError):
    """libggml-base.so was not found."""


class _Traits(ctypes.Structure):
    _fields_ = [
        ("type_name", ctypes.c_char_p),
        ("blck_size", ctypes.c_int64),
        ("blck_size_interleave", ctypes.c_int64),
        ("type_size", ctypes.c_size_t),
        ("is_quantized", ctypes.c_bool),
        ("to_float", ctypes.c_void_p),
        ("from_float_ref", ctypes.c_void_p),
    ]


_ROW_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)


def find_library() -> Path:
    """Path of libggml-base.so, or GGMLMissingError saying where it looked and how to build it."""
    roots = []
    if os.environ.get("LOWBIT_LLAMA_CPP_DIR"):
        roots.append(Path(os.environ["LOWBIT_LLAMA_CPP_DIR"]))
    roots.append(DEFAULT_DIR)
    for root in roots:
        if root.is_dir():
            hits = sorted(root.rglob("libggml-base.so"))
            if hits:
                return hits[0]
    raise GGMLMissingError(
        f"libggml-base.so not found under {', '.join(str(r) for r in roots)}:"
        " run `make llama-tools`"
        " or build ggml-base (see tests/lowbit_testkit/ggml_ref.py) and set LOWBIT_LLAMA_CPP_DIR"
    )


@lru_cache(maxsize=1)
def library() -> ctypes.CDLL:
    lib = ctypes.CDLL(str(find_library()))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_void_p,
    ]
    lib.ggml_get_type_traits.restype = ctypes.POINTER(_Traits)
    lib.ggml_get_type_traits.argtypes = [ctypes.c_int]
    lib.ggml_row_size.restype = ctypes.c_size_t
    lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    lib.ggml_quantize_init.argtypes = [ctypes.c_int]
    return lib


def _ptr(a: np.ndarray) -> ctypes.c_void_p:
    return ctypes.c_void_p(a.ctypes.data)


def quantize_chunk(ggml_type: int, x: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    """ggml_quantize_chunk (what llama-quantize calls, single thread) on float32 (rows, K)."""
    lib = library()
    x = np.ascontiguousarray(x, dtype=np.float32)
    rows, k = x.shape
    out = np.zeros((rows, lib.ggml_row_size(ggml_type, k)), dtype=np.uint8)
    imp = None if imatrix is None else np.ascontiguousarray(imatrix, dtype=np.float32)
    lib.ggml_quantize_init(ggml_type)
    n = lib.ggml_quantize_chunk(
        ggml_type, _ptr(x), _ptr(out), 0, rows, k, None if imp is None else _ptr(imp)
    )
    assert n == out.size
    return out


def quantize_row_ref(ggml_type: int, x: np.ndarray) -> np.ndarray:
    """The type's from_float_ref (quantize_row_<type>_ref) applied to each row."""
    lib = library()
    fn = _ROW_FN(lib.ggml_get_type_traits(ggml_type).contents.from_float_ref)
    x = np.ascontiguousarray(x, dtype=np.float32)
    rows, k = x.shape
    out = np.zeros((rows, lib.ggml_row_size(ggml_type, k)), dtype=np.uint8)
    for r in range(rows):
        fn(ctypes.c_void_p(x[r].ctypes.data), ctypes.c_void_p(out[r].ctypes.data), k)
    return out


def dequantize_rows(ggml_type: int, raw: np.ndarray, k: int) -> np.ndarray:
    """The type's to_float (dequantize_row_<type>) on uint8 (rows, nbytes)."""
    lib = library()
    fn = _ROW_FN(lib.ggml_get_type_traits(ggml_type).contents.to_float)
    raw = np.ascontiguousarray(raw, dtype=np.uint8)
    out = np.zeros((raw.shape[0], k), dtype=np.float32)
    for r in range(raw.shape[0]):
        fn(ctypes.c_void_p(raw[r].ctypes.data), ctypes.c_void_p(out[r].ctypes.data), k)
    return out


def golden_inputs() -> tuple[np.ndarray, np.ndarray]:
    """The rows of the committed golden vectors (one 256-element super-block each, so 8 legacy
    blocks) and an importance vector: edge cases first, then ordinary weights."""
    rng = np.random.default_rng(13)
    rows = []
    rows.append(np.zeros(256))  # all zero
    rows.append(np.full(256, 0.5))  # constant
    rows.append(np.full(256, -3.0))  # negative constant
    r = rng.normal(0, 0.02, 256)
    r[17] = 50.0
    rows.append(r)  # one outlier
    rows.append(-np.abs(rng.normal(0, 0.05, 256)))  # all negative
    r = rng.normal(0, 0.02, 256)
    r[100] = -2.0
    rows.append(r)  # negative max
    rows.append(rng.normal(0, 1e-39, 256))  # subnormal
    rows.append(rng.normal(0, 1e-20, 256))  # tiny
    rows.append(rng.normal(0, 1e4, 256))  # huge (fp16 scales near their range)
    rows.append(rng.integers(-8, 8, 256).astype(np.float64))  # integers: rounding ties
    rows.append(rng.normal(0, 0.05, 256))
    rows.append(rng.uniform(-1, 1, 256))
    x = np.stack(rows).astype(np.float32)
    imp = rng.uniform(0.01, 3.0, 256).astype(np.float32)
    return x, imp


def write_golden(path: Path, types: dict[str, int]) -> None:
    """Write the golden .npz: per type the ggml_quantize_chunk bytes without and with the
    importance vector and dequantize_row_<type> of the former."""
    x, imp = golden_inputs()
    out: dict[str, np.ndarray] = {"x": x, "importance": imp}
    for name, t in types.items():
        q = quantize_chunk(t, x)
        out[f"{name}.q"] = q
        out[f"{name}.q_imp"] = quantize_chunk(t, x, imp)
        out[f"{name}.deq"] = dequantize_rows(t, q, x.shape[1])
    out["provenance"] = np.array(
        f"ggml C reference of llama.cpp {LLAMA_CPP_COMMIT} (vendored in the"
        " llama-cpp-python==0.3.36"
        " sdist), libggml-base.so via ctypes: ggml_quantize_chunk (imatrix=None and the"
        " 'importance' vector) and the type's to_float. Regenerate with"
        " `PYTHONPATH=src:tests python -m lowbit_testkit.ggml_ref tests/lowbit_testkit/golden/"
        "gguf_blocks.npz` (LOWBIT_LLAMA_CPP_DIR = a build with libggml-base.so)."
    )
    np.savez_compressed(path, **out)


if __name__ == "__main__":  # pragma: no cover - regenerates the committed golden file
    import sys

    from lowbit.formats.blocks import BLOCK_TYPES

    write_golden(Path(sys.argv[1]), {n: c.ggml_type for n, c in BLOCK_TYPES.items()})
