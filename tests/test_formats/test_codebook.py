"""NF4: nearest-level codes with absmax scales."""

from __future__ import annotations

import torch

from lowbit.formats.codebook import choose_absmax_scale, dequantize_codebook, quantize_codebook
from lowbit.formats.granularity import PerGroup, broadcast_to
from lowbit.formats.qtypes import NF4


def test_nf4_levels_are_sorted_with_exact_zero_and_ends() -> None:
    levels = NF4.level_tensor()
    assert levels.numel() == 16 and NF4.bits == 4
    assert torch.all(levels[1:] > levels[:-1])
    assert levels[0] == -1 and levels[7] == 0 and levels[-1] == 1


def test_nf4_picks_the_nearest_level() -> None:
    g = PerGroup(64)
    x = torch.randn(4, 200)
    scale = choose_absmax_scale(x, g)
    q = quantize_codebook(x, scale, g)
    v = x / broadcast_to(scale, tuple(x.shape), g)
    distances = (v.unsqueeze(-1) - NF4.level_tensor()).abs()
    best = distances.min(dim=-1).values
    chosen = distances.gather(-1, q.long().unsqueeze(-1)).squeeze(-1)
    assert torch.equal(chosen, best)
    xq = dequantize_codebook(q, scale, g)
    assert torch.equal(xq, NF4.level_tensor()[q.long()] * broadcast_to(scale, (4, 200), g))
    # the absmax element of every group is reproduced exactly
    assert torch.equal(xq.abs().amax(), x.abs().amax())


def test_nf4_zero_tensor() -> None:
    x = torch.zeros(3, 64)
    scale = choose_absmax_scale(x)
    assert torch.equal(dequantize_codebook(quantize_codebook(x, scale), scale), x)
