"""CodebookPackedTensor (NF4) and LevelsPackedTensor (binary/ternary)."""

from __future__ import annotations

import pytest
import torch

from lowbit.algorithms import rtn_tensor
from lowbit.errors import InvalidInputError
from lowbit.formats.codebook import choose_absmax_scale, dequantize_codebook, quantize_codebook
from lowbit.formats.granularity import PerAxis, PerGroup, PerTensor
from lowbit.formats.levels import choose_levels_scale, dequantize_levels, quantize_levels
from lowbit.formats.qtypes import BINARY, NF4, TERNARY
from lowbit.formats.weight_format import WeightFormat
from lowbit.tensors import LevelsPackedTensor

W = torch.randn(8, 70, generator=torch.Generator().manual_seed(2))
GRANULARITIES = [PerTensor(), PerAxis(0), PerGroup(64), PerGroup(16, axis=0)]


@pytest.mark.parametrize("granularity", GRANULARITIES, ids=repr)
def test_nf4_matches_formats_and_round_trips(granularity, roundtrip):
    qt = rtn_tensor(W, WeightFormat(NF4, granularity))
    scale = choose_absmax_scale(W, granularity)
    codes = quantize_codebook(W, scale, granularity)
    assert torch.equal(qt.codes(), codes)
    assert torch.equal(qt.dequantize(), dequantize_codebook(codes, scale, granularity))
    assert qt.nbytes == W.numel() // 2 + scale.numel() * 4
    roundtrip(qt)


def test_nf4_picks_the_nearest_level():
    qt = rtn_tensor(W, WeightFormat(NF4, PerGroup(64)))
    scale = qt.scale.repeat_interleave(64, dim=-1)[:, : W.shape[1]]
    candidates = NF4.level_tensor().reshape(1, 1, -1) * scale.unsqueeze(-1)
    best = (candidates - W.unsqueeze(-1)).abs().min(dim=-1).values
    assert torch.allclose((qt.dequantize() - W).abs(), best, atol=1e-6)


@pytest.mark.parametrize("qtype", [BINARY, TERNARY], ids=lambda t: t.name)
@pytest.mark.parametrize("granularity", GRANULARITIES, ids=repr)
def test_levels_match_formats_and_round_trip(qtype, granularity, roundtrip):
    qt = rtn_tensor(W, WeightFormat(qtype, granularity))
    scale, threshold = choose_levels_scale(W, qtype, granularity)
    codes = quantize_levels(W, threshold, qtype, granularity)
    assert torch.equal(qt.codes(), codes)
    assert torch.equal(qt.dequantize(), dequantize_levels(codes, scale, qtype, granularity))
    assert qt.nbytes == -(-W.numel() * qtype.bits // 8) + scale.numel() * 4
    roundtrip(qt)


def test_binary_and_ternary_properties():
    binary = rtn_tensor(W, WeightFormat(BINARY, PerAxis(0)))
    d = binary.dequantize()
    assert torch.equal(torch.sign(d), torch.where(W >= 0, 1.0, -1.0))  # sign kept
    assert torch.allclose(d.abs(), W.abs().mean(dim=1, keepdim=True).expand_as(W))  # a = mean|w|
    ternary = rtn_tensor(W, WeightFormat(TERNARY, PerTensor()))
    t = ternary.dequantize()
    assert len(torch.unique(t)) == 3
    zeroed = W.abs() <= 0.7 * W.abs().mean()
    assert torch.equal(t == 0, zeroed)
    assert torch.allclose(t[~zeroed].abs(), W.abs()[~zeroed].mean().expand(int((~zeroed).sum())))
    assert binary.packed.numel() * 8 == W.numel()
    assert ternary.packed.numel() * 4 == W.numel()


def test_from_codes_rejects_codes_outside_the_table():
    codes = torch.full((4, 4), 3, dtype=torch.uint8)  # ternary has codes 0..2 only
    with pytest.raises(InvalidInputError, match=r"\[0, 2\]"):
        LevelsPackedTensor.from_codes(codes, torch.ones(()), qtype=TERNARY, granularity=PerTensor())
