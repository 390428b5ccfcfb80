"""Floating-point formats: fp16/bf16 casts and scaled fp8 (e4m3fn, e5m2).

fp16 and bf16 are plain casts (round to nearest even, as torch's ``.to`` does). fp8 has so
little range (e4m3fn: ±448, e5m2: ±57344) that weights are first divided by a scale
s = amax / fp8_max per granularity block, then cast:  q = fp8(x / s),  x' = s·float(q).
"""

from __future__ import annotations

import torch

from lowbit.errors import InvalidSpecError
from lowbit.formats.checks import as_float, check_finite
from lowbit.formats.granularity import (
    Granularity,
    PerTensor,
    broadcast_to,
    from_blocks,
    to_blocks,
)
from lowbit.formats.qtypes import FloatType


def choose_float_scale(
    x: torch.Tensor, qtype: FloatType, granularity: Granularity = PerTensor()
) -> torch.Tensor:
    """Scale s = amax / max(qtype) per block (1 where a block is all zero; 1 for unscaled)."""
    x = as_float(x)
    check_finite(x)
    if not qtype.scaled:
        return torch.ones(())
    amax = to_blocks(x, granularity).abs().amax(dim=-1, keepdim=True)
    scale = amax / qtype.max
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return from_blocks(scale, tuple(x.shape), granularity)


def quantize_float(
    x: torch.Tensor,
    qtype: FloatType,
    scale: torch.Tensor | None = None,
    granularity: Granularity = PerTensor(),
) -> torch.Tensor:
    """Cast ``x / scale`` to the format's dtype (round to nearest even, saturating for fp8)."""
    x = as_float(x)
    check_finite(x)
    if scale is None:
        return x.to(qtype.dtype)
    if not qtype.scaled:
        raise InvalidSpecError(f"{qtype.name} is a plain cast and takes no scale")
    v = x / broadcast_to(scale, tuple(x.shape), granularity)
    # torch's float8 cast does not saturate: values past the max would become NaN.
    return v.clamp(-qtype.max, qtype.max).to(qtype.dtype)


def dequantize_float(
    q: torch.Tensor,
    scale: torch.Tensor | None = None,
    granularity: Granularity = PerTensor(),
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """x' = s·float(q)."""
    out = q.to(torch.float32)
    if scale is not None:
        out = out * broadcast_to(scale, tuple(q.shape), granularity)
    return out.to(dtype)
