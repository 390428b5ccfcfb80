"""GGUF block codecs against llama.cpp's C reference (libggml-base.so via ctypes) on real
weights (SmolLM2, MiniLM), with and without an importance vector, and on a row wider than
256K values. Slow; they FAIL (never skip) when the library is missing: `make llama-tools`
builds it, or set LOWBIT_LLAMA_CPP_DIR to a build folder holding libggml-base.so."""

from __future__ import annotations

from functools import lru_cache

import gguf
import numpy as np
import pytest
import torch

from lowbit.eval.bundled import minilm_path, smollm2_gguf_path
from lowbit.formats.blocks import BLOCK_TYPES
from lowbit_testkit import ggml_ref

pytestmark = pytest.mark.slow

TYPES = sorted(BLOCK_TYPES)
LEGACY = {"q8_0", "q4_0", "q4_1", "q5_0", "q5_1"}
# Legacy types have no order-dependent float sums: every block must match. The k-quants and
# IQ4_NL searches sum in float32 in ggml's order; the acceptance floor is 99.99% of blocks.
MIN_IDENTICAL = 0.9999


@pytest.fixture(scope="module", autouse=True)
def ggml_library():
    try:
        return ggml_ref.library()
    except ggml_ref.GGMLMissingError as e:
        pytest.fail(str(e), pytrace=False)


@lru_cache(maxsize=1)
def smollm2_weights() -> np.ndarray:
    """Some SmolLM2 tensors (dequantized from its Q4_1 GGUF with gguf-py) as 256-wide rows."""
    reader = gguf.GGUFReader(smollm2_gguf_path())
    wanted = (
        "blk.0.ffn_down.weight",
        "blk.3.attn_q.weight",
        "blk.7.ffn_gate.weight",
        "blk.12.attn_k.weight",
    )
    parts = []
    for t in reader.tensors:
        if t.name in wanted:
            parts.append(gguf.quants.dequantize(t.data, t.tensor_type).reshape(-1))
    assert len(parts) == len(wanted)
    return np.concatenate(parts).astype(np.float32).reshape(-1, 256)[:2048]


@lru_cache(maxsize=1)
def minilm_weights() -> np.ndarray:
    from safetensors.numpy import load_file

    sd = load_file(str(minilm_path() / "model.safetensors"))
    names = [
        n for n in sorted(sd) if n.endswith("weight") and sd[n].ndim == 2 and "embeddings" not in n
    ]
    flat = np.concatenate([sd[n].astype(np.float32).reshape(-1) for n in names[:6]])
    return flat[: flat.size // 256 * 256].reshape(-1, 256)[:2048]


WEIGHTS = {"smollm2": smollm2_weights, "minilm": minilm_weights}


def _importance(k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.gamma(2.0, 1.0, k) + 1e-3).astype(np.float32)  # imatrix-like: positive, skewed


def _identical_fraction(name: str, ours: np.ndarray, ref: np.ndarray) -> float:
    codec = BLOCK_TYPES[name]
    a = ours.reshape(-1, codec.type_size)
    b = ref.reshape(-1, codec.type_size)
    return float((a == b).all(-1).mean())


def _check(name: str, ours: np.ndarray, ref: np.ndarray) -> None:
    frac = _identical_fraction(name, ours, ref)
    floor = 1.0 if name in LEGACY else MIN_IDENTICAL
    assert frac >= floor, f"{name}: {frac:.6%} of blocks identical to ggml (need {floor:.2%})"


@pytest.mark.parametrize("native", [True, False], ids=["c-if-built", "torch"])
@pytest.mark.parametrize("model", sorted(WEIGHTS))
@pytest.mark.parametrize("name", TYPES)
def test_rtn_matches_ggml(model: str, name: str, native: bool) -> None:
    x = WEIGHTS[model]()
    codec = BLOCK_TYPES[name]
    ours = codec.quantize(torch.from_numpy(x), native=native).numpy()
    _check(name, ours, ggml_ref.quantize_chunk(codec.ggml_type, x))
    if name in LEGACY:  # second oracle: gguf-py's numpy port
        ref = gguf.quants.quantize(x, gguf.GGMLQuantizationType(codec.ggml_type))
        np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("name", TYPES)
def test_rtn_is_quantize_row_ref(name: str) -> None:
    """ggml_quantize_chunk without imatrix is quantize_row_<type>_ref for all but IQ4_NL
    (quantize_iq4_nl searches 15 scales; the _ref variant searches none)."""
    x = smollm2_weights()[:256]
    codec = BLOCK_TYPES[name]
    ref = ggml_ref.quantize_row_ref(codec.ggml_type, x)
    ours = (
        codec.quantize_ref(torch.from_numpy(x))
        if name == "iq4_nl"
        else codec.quantize(torch.from_numpy(x))
    )
    _check(name, ours.numpy(), ref)


@pytest.mark.parametrize("model", sorted(WEIGHTS))
@pytest.mark.parametrize("name", TYPES)
def test_importance_matches_ggml(model: str, name: str) -> None:
    x = WEIGHTS[model]()
    imp = _importance(x.shape[1], 7)
    codec = BLOCK_TYPES[name]
    ours = codec.quantize(torch.from_numpy(x), torch.from_numpy(imp)).numpy()
    _check(name, ours, ggml_ref.quantize_chunk(codec.ggml_type, x, imp))


@pytest.mark.parametrize("name", TYPES)
def test_dequantize_matches_ggml_and_gguf_py(name: str) -> None:
    x = smollm2_weights()
    codec = BLOCK_TYPES[name]
    raw = ggml_ref.quantize_chunk(codec.ggml_type, x)
    ours = codec.dequantize(torch.from_numpy(raw), x.shape[1]).numpy()
    c_ref = ggml_ref.dequantize_rows(codec.ggml_type, raw, x.shape[1])
    py_ref = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType(codec.ggml_type))
    assert np.array_equal(ours.view(np.uint32), c_ref.view(np.uint32))
    assert np.array_equal(ours.view(np.uint32), py_ref.view(np.uint32))


@pytest.mark.parametrize("name", TYPES)
def test_wide_row_matches_ggml(name: str) -> None:
    """(c) a row of 256K + 1024 values, with and without importance."""
    flat = smollm2_weights().reshape(-1)
    x = np.resize(flat, 262144 + 1024).reshape(1, -1).astype(np.float32)
    codec = BLOCK_TYPES[name]
    _check(
        name,
        codec.quantize(torch.from_numpy(x)).numpy(),
        ggml_ref.quantize_chunk(codec.ggml_type, x),
    )
    imp = _importance(x.shape[1], 11)
    ours = codec.quantize(torch.from_numpy(x), torch.from_numpy(imp)).numpy()
    _check(name, ours, ggml_ref.quantize_chunk(codec.ggml_type, x, imp))
