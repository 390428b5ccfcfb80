"""Binary {-a, +a} and ternary {-a, 0, +a} weights with one magnitude ``a`` per block.

* binary (XNOR-Net, Rastegari et al. 2016): q = [x >= 0], a = mean|x|, x' = a·(2q - 1).
  a = mean|x| minimises ||x - a·sign(x)||².
* ternary (Ternary Weight Networks, Li & Liu 2016): threshold Δ = 0.7·mean|x|;
  t = sign(x) where |x| > Δ else 0; a = mean of |x| over |x| > Δ; codes q = t + 1 in {0, 1, 2};
  x' = a·(q - 1).
"""

from __future__ import annotations

import torch

from lowbit.errors import InvalidSpecError
from lowbit.formats.checks import as_float, check_finite
from lowbit.formats.granularity import (
    Granularity,
    PerTensor,
    block_counts,
    broadcast_to,
    from_blocks,
    to_blocks,
)
from lowbit.formats.qtypes import BINARY, TERNARY, TERNARY_THRESHOLD, LevelsType


def _mean_abs(x: torch.Tensor, granularity: Granularity) -> torch.Tensor:
    blocks = to_blocks(x, granularity).abs()
    counts = block_counts(x, granularity)
    size = blocks.shape[-1]
    # Padding repeats the last element: remove its extra copies from the sum.
    pad = size - counts
    total = blocks.sum(-1, keepdim=True) - pad * blocks[..., -1:]
    return total / counts


def choose_levels_scale(
    x: torch.Tensor, qtype: LevelsType, granularity: Granularity = PerTensor()
) -> tuple[torch.Tensor, torch.Tensor]:
    """(magnitude a, threshold Δ) per block; Δ is 0 for binary."""
    x = as_float(x)
    check_finite(x)
    shape = tuple(x.shape)
    mean_abs = _mean_abs(x, granularity)
    if qtype == BINARY:
        a = torch.where(mean_abs > 0, mean_abs, torch.ones_like(mean_abs))
        return from_blocks(a, shape, granularity), torch.zeros_like(
            from_blocks(a, shape, granularity)
        )
    if qtype != TERNARY:
        raise InvalidSpecError(f"{qtype.name} is not a levels format; use binary or ternary")
    delta = TERNARY_THRESHOLD * mean_abs
    blocks = to_blocks(x, granularity)
    counts = block_counts(x, granularity)
    idx = torch.arange(blocks.shape[-1]).reshape(1, 1, -1)
    real = idx < counts  # mask out the padding of a ragged last group
    kept = (blocks.abs() > delta) & real
    n_kept = kept.sum(-1, keepdim=True)
    a = (blocks.abs() * kept).sum(-1, keepdim=True) / n_kept.clamp(min=1)
    a = torch.where(n_kept > 0, a, torch.ones_like(a))
    return from_blocks(a, shape, granularity), from_blocks(delta, shape, granularity)


def quantize_levels(
    x: torch.Tensor,
    threshold: torch.Tensor,
    qtype: LevelsType,
    granularity: Granularity = PerTensor(),
) -> torch.Tensor:
    """Codes (uint8): binary 0/1 for -a/+a, ternary 0/1/2 for -a/0/+a."""
    x = as_float(x)
    check_finite(x)
    if qtype == BINARY:
        return (x >= 0).to(torch.uint8)
    delta = broadcast_to(threshold, tuple(x.shape), granularity)
    t = torch.where(x.abs() > delta, torch.sign(x), torch.zeros_like(x))
    return (t + 1).to(torch.uint8)


def dequantize_levels(
    q: torch.Tensor,
    scale: torch.Tensor,
    qtype: LevelsType,
    granularity: Granularity = PerTensor(),
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """x' = a·level[q] (binary levels -1, +1; ternary -1, 0, +1)."""
    levels = torch.tensor(qtype.levels, dtype=torch.float32)
    out = levels[q.long()] * broadcast_to(scale, tuple(q.shape), granularity)
    return out.to(dtype)
