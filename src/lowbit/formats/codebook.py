"""Codebook formats (NF4): each code indexes a fixed table of levels in [-1, 1].

absmax scaling per block (QLoRA / bitsandbytes): s = max|x|,  q = argmin_i |x/s - level_i|,
x' = s·level_q. Ties go to the lower level (the first minimum).
"""

from __future__ import annotations

import torch

from lowbit.formats.checks import as_float, check_finite
from lowbit.formats.granularity import (
    Granularity,
    PerGroup,
    broadcast_to,
    from_blocks,
    to_blocks,
)
from lowbit.formats.qtypes import NF4, CodebookType


def choose_absmax_scale(x: torch.Tensor, granularity: Granularity = PerGroup(64)) -> torch.Tensor:
    """s = max|x| per block (1 for an all-zero block so the scale stays finite)."""
    x = as_float(x)
    check_finite(x)
    amax = to_blocks(x, granularity).abs().amax(dim=-1, keepdim=True)
    amax = torch.where(amax > 0, amax, torch.ones_like(amax))
    return from_blocks(amax, tuple(x.shape), granularity)


def quantize_codebook(
    x: torch.Tensor,
    scale: torch.Tensor,
    granularity: Granularity = PerGroup(64),
    qtype: CodebookType = NF4,
) -> torch.Tensor:
    """Index (uint8) of the nearest level to x / s."""
    x = as_float(x)
    check_finite(x)
    levels = qtype.level_tensor()
    v = x / broadcast_to(scale, tuple(x.shape), granularity)
    # Nearest level by midpoints: bucketize against the midpoints between sorted levels.
    midpoints = (levels[1:] + levels[:-1]) / 2
    return torch.bucketize(v, midpoints, right=False).to(torch.uint8)


def dequantize_codebook(
    q: torch.Tensor,
    scale: torch.Tensor,
    granularity: Granularity = PerGroup(64),
    qtype: CodebookType = NF4,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """x' = s·level[q]."""
    levels = qtype.level_tensor()
    out = levels[q.long()] * broadcast_to(scale, tuple(q.shape), granularity)
    return out.to(dtype)
