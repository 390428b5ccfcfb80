"""GGUF block codecs (lowbit.formats.blocks) against committed golden vectors produced by
llama.cpp's C reference, and against gguf-py: runs without the C library."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from lowbit.errors import UnsupportedFormatError
from lowbit.formats.blocks import BLOCK_TYPES, get_block_codec
from lowbit_testkit.golden import GOLDEN

EXPECTED = {
    "q8_0",
    "q4_0",
    "q4_1",
    "q5_0",
    "q5_1",
    "q2_k",
    "q3_k",
    "q4_k",
    "q5_k",
    "q6_k",
    "iq4_nl",
}
LEGACY = ["q8_0", "q4_0", "q4_1", "q5_0", "q5_1"]


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    with np.load(GOLDEN / "gguf_blocks.npz") as f:
        return {k: f[k] for k in f.files}


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.array_equal(
        np.ascontiguousarray(a, np.float32).view(np.uint32),
        np.ascontiguousarray(b, np.float32).view(np.uint32),
    )


def test_registry_names_and_geometry() -> None:
    assert set(BLOCK_TYPES) == EXPECTED
    for name, codec in BLOCK_TYPES.items():
        assert codec.name == name
        t = gguf.GGMLQuantizationType(codec.ggml_type)
        assert t.name.lower() == name
        assert (codec.block_size, codec.type_size) == gguf.GGML_QUANT_SIZES[t]
        assert codec.nbytes((3, 4 * codec.block_size)) == 12 * codec.type_size


def test_every_type_has_a_golden_vector(golden) -> None:
    assert "llama.cpp 0c1e570" in str(golden["provenance"])
    for name in BLOCK_TYPES:
        for part in ("q", "q_imp", "deq"):
            assert f"{name}.{part}" in golden, f"{name} has no golden {part}"


def test_unknown_type_names_the_known_ones() -> None:
    assert get_block_codec("Q4_K") is BLOCK_TYPES["q4_k"]
    with pytest.raises(UnsupportedFormatError, match="q4_k"):
        get_block_codec("q7_0")


def test_bad_shapes_are_refused() -> None:
    codec = BLOCK_TYPES["q4_k"]
    with pytest.raises(UnsupportedFormatError, match="multiple"):
        codec.quantize(torch.zeros(2, 100))
    with pytest.raises(UnsupportedFormatError, match="importance"):
        codec.quantize(torch.zeros(2, 256), torch.ones(255))
    with pytest.raises(UnsupportedFormatError, match="bytes per row"):
        codec.dequantize(torch.zeros(2, 10, dtype=torch.uint8), 256)


@pytest.mark.parametrize("native", [True, False], ids=["c-if-built", "torch"])
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_golden_rtn(golden, name: str, native: bool) -> None:
    codec = BLOCK_TYPES[name]
    q = codec.quantize(torch.from_numpy(golden["x"]), native=native).numpy()
    assert q.dtype == np.uint8
    np.testing.assert_array_equal(q, golden[f"{name}.q"])


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_golden_importance(golden, name: str) -> None:
    codec = BLOCK_TYPES[name]
    x, imp = torch.from_numpy(golden["x"]), torch.from_numpy(golden["importance"])
    np.testing.assert_array_equal(codec.quantize(x, imp).numpy(), golden[f"{name}.q_imp"])


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_golden_dequantize(golden, name: str) -> None:
    codec = BLOCK_TYPES[name]
    raw = torch.from_numpy(golden[f"{name}.q"])
    assert _same_bits(codec.dequantize(raw, golden["x"].shape[1]).numpy(), golden[f"{name}.deq"])


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_dequantize_matches_gguf_py(golden, name: str) -> None:
    codec = BLOCK_TYPES[name]
    raw = golden[f"{name}.q_imp"]
    ref = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType(codec.ggml_type))
    assert _same_bits(codec.dequantize(torch.from_numpy(raw), ref.shape[1]).numpy(), ref)


@pytest.mark.parametrize("name", LEGACY)
def test_legacy_quantize_matches_gguf_py(name: str) -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(64, 512, generator=gen) * 0.03
    x[0, :32] = 0
    x[1, 32:64] = -7.0
    codec = BLOCK_TYPES[name]
    ref = gguf.quants.quantize(x.numpy(), gguf.GGMLQuantizationType(codec.ggml_type))
    np.testing.assert_array_equal(codec.quantize(x).numpy(), ref)


@pytest.mark.parametrize("name", LEGACY)
def test_wide_row_legacy_matches_gguf_py(name: str) -> None:
    """(c) one row wider than 256K values."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(1, 262144 + 1024, generator=gen) * 0.02
    codec = BLOCK_TYPES[name]
    ref = gguf.quants.quantize(x.numpy(), gguf.GGMLQuantizationType(codec.ggml_type))
    np.testing.assert_array_equal(codec.quantize(x).numpy(), ref)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_encode_decode_round_trip(golden, name: str) -> None:
    """decode then encode gives back ggml's bytes: the grid API writes what ggml writes."""
    codec = BLOCK_TYPES[name]
    raw = torch.from_numpy(golden[f"{name}.q"]).view(golden["x"].shape[0], -1, codec.type_size)
    parts = codec.decode(raw)
    parts = [p for p in parts if p is not None]
    np.testing.assert_array_equal(codec.encode(*parts).numpy(), raw.numpy())
