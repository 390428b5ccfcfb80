"""The fused codecs must equal the reference affine path bit for bit, on every input."""

from __future__ import annotations

import logging

import pytest
import torch

from lowbit.errors import InvalidInputError, InvalidSpecError
from lowbit.formats import PerAxis, PerGroup, choose_qparams, fused, pack_codes, quantize
from lowbit.formats.fused import quantize_int8_per_channel, quantize_pack_int4_groups
from lowbit.formats.qtypes import IntType


def ref_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    qp = choose_qparams(w, IntType(8, True), PerAxis(0))
    return quantize(w, qp), qp.scale


def ref_int4(w: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    qp = choose_qparams(w, IntType(4, True), PerGroup(group))
    return pack_codes(quantize(w, qp).to(torch.int16) - qp.qmin, 4), qp.scale


def assert_same(got: tuple[torch.Tensor, torch.Tensor], want: tuple[torch.Tensor, torch.Tensor]):
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape
        assert torch.equal(g, w)


def edge_matrix(n: int, k: int, seed: int) -> torch.Tensor:
    """Random rows of very different magnitudes plus zero, constant, tie and tiny rows."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * torch.logspace(-6, 4, n).unsqueeze(1)
    w[0] = 0.0
    w[1] = -3.25
    w[2] = torch.arange(k) % 15 - 7 + 0.5  # ties at s = 1 for int4 groups holding +-7.5
    w[3] = 1e-44  # subnormal: its scale underflows to 0 and must become 1, as in affine
    w[4, ::3] = 0.0
    return w


SHAPES = [(8, 64), (9, 96), (16, 4096), (5, 100), (6, 33), (7, 1)]


@pytest.mark.parametrize("shape", SHAPES)
def test_int8_matches_affine(shape):
    w = edge_matrix(*[max(s, 5) if i == 0 else s for i, s in enumerate(shape)], seed=1)
    assert_same(quantize_int8_per_channel(w), ref_int8(w))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("group", [32, 64, 6, 3])
def test_int4_matches_affine_pack(shape, group):
    w = edge_matrix(max(shape[0], 5), shape[1], seed=2)
    assert_same(quantize_pack_int4_groups(w, group), ref_int4(w, group))


def test_ties_round_half_even():
    # Row max 127 -> s = 1 exactly, so x / s lands on .5: half-even must hold.
    w = torch.tensor([[127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -126.5, 3.0]])
    codes, scale = quantize_int8_per_channel(w)
    assert scale.item() == 1.0
    assert codes.tolist() == [[127, 0, 2, 2, 0, -2, -126, 3]]
    assert_same((codes, scale), ref_int8(w))


def test_more_dims_and_low_precision_inputs():
    w = torch.randn(4, 3, 64)
    assert_same(quantize_int8_per_channel(w), ref_int8(w))
    assert_same(quantize_pack_int4_groups(w, 32), ref_int4(w, 32))
    half = torch.randn(8, 64).to(torch.bfloat16)
    assert_same(quantize_pack_int4_groups(half, 32), ref_int4(half, 32))


def test_chunking_covers_all_rows(monkeypatch):
    # Force many small chunks, including a short last one.
    monkeypatch.setattr(fused, "_CHUNK_ELEMS", 3 * 64)
    w = torch.randn(10, 64)
    assert_same(quantize_int8_per_channel(w), ref_int8(w))
    assert_same(quantize_pack_int4_groups(w, 32), ref_int4(w, 32))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_rejected(bad):
    w = torch.randn(4, 64)
    w[2, 5] = bad
    with pytest.raises(InvalidInputError, match="NaN"):
        quantize_int8_per_channel(w)
    with pytest.raises(InvalidInputError, match="NaN"):
        quantize_pack_int4_groups(w)


def test_bad_inputs_rejected():
    with pytest.raises(InvalidInputError, match="float32"):
        quantize_int8_per_channel(torch.randn(4, 8, dtype=torch.float64))
    with pytest.raises(InvalidInputError, match="non-empty"):
        quantize_pack_int4_groups(torch.randn(4, 0))
    with pytest.raises(InvalidSpecError, match="group size"):
        quantize_pack_int4_groups(torch.randn(4, 8), 0)


def test_compile_failure_falls_back_to_eager(monkeypatch, caplog):
    def broken(*_args):
        def kernel(_x):
            raise RuntimeError("no C++ compiler")

        return kernel

    monkeypatch.setattr(fused, "_compiled", broken)
    w = edge_matrix(8, 64, seed=3)
    with caplog.at_level(logging.WARNING, logger="lowbit.formats.fused"):
        assert_same(quantize_int8_per_channel(w, compiled=True), ref_int8(w))
        assert_same(quantize_pack_int4_groups(w, 32, compiled=True), ref_int4(w, 32))
    assert "no C++ compiler" in caplog.text


@pytest.mark.slow
def test_compiled_matches_affine():
    # torch.compile takes seconds (tens when inductor's cache is cold): marked slow.
    for n, k in [(8, 64), (37, 4096), (5, 96)]:
        w = edge_matrix(n, k, seed=n)
        assert_same(quantize_int8_per_channel(w, compiled=True), ref_int8(w))
        assert_same(quantize_pack_int4_groups(w, 32, compiled=True), ref_int4(w, 32))
    w = torch.randn(8, 64)
    w[3, 7] = float("nan")
    with pytest.raises(InvalidInputError):
        quantize_pack_int4_groups(w, 32, compiled=True)
    with pytest.raises(InvalidInputError):
        quantize_int8_per_channel(w, compiled=True)
