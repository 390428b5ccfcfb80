"""Round-to-nearest (RTN) weight quantization: the baseline every other algorithm must beat,
and the one RTN every caller uses (recipes, GPTQ's layers outside the blocks, tests).

Each weight is rounded independently with parameters chosen from its own block (per tensor,
per output channel or per group). The arithmetic is ``lowbit.formats.affine``'s; this module
picks the granularity, rounds the stored scales to their storage dtype *before* the codes
are computed (so codes and stored parameters agree), and for the two common specs (int8 per
output channel, int4 per group along the last axis, symmetric, float32 scales) takes
``lowbit.formats.fused``'s codecs, which are bit-identical to the affine path (their tests
prove it) and make fewer passes over memory. Containers only store the result:
``rtn_tensor`` = ``IntPackedTensor.from_codes(*rtn_quantize(...))``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from lowbit.errors import InvalidInputError, InvalidSpecError
from lowbit.formats import fused
from lowbit.formats.affine import (
    AsymmetricForm,
    ClipRange,
    QParams,
    Rounding,
    choose_qparams,
    quantize,
)
from lowbit.formats.granularity import Granularity, PerAxis, PerGroup
from lowbit.formats.qtypes import IntType
from lowbit.tensors.base import to_storage, widen
from lowbit.tensors.integer import IntPackedTensor

__all__ = ["rtn_quantize", "rtn_tensor", "weight_granularity"]

_INT8 = IntType(8, True)


def weight_granularity(group_size: int | None) -> Granularity:
    """PerAxis(0) (one scale per output channel) for None, else PerGroup(group_size) along
    the input dimension: the layouts both RTN and GPTQ produce for a (N, K) weight."""
    if group_size is None:
        return PerAxis(0)
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise InvalidSpecError(
            f"group_size must be a positive int or None (per channel), got {group_size!r}"
        )
    return PerGroup(group_size)


def check_weight(weight: torch.Tensor) -> None:
    """A weight to quantize is a non-empty 2-D (out_features, in_features) float tensor."""
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or not weight.is_floating_point():
        what = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise InvalidInputError(
            f"weight must be a 2-D float tensor (out_features, in_features), got {what}; "
            "reshape conv weights to (out_channels, -1) first"
        )
    if weight.numel() == 0:
        raise InvalidInputError(f"weight of shape {tuple(weight.shape)} is empty")


def rtn_quantize(
    w: torch.Tensor,
    qtype: IntType,
    granularity: Granularity,
    *,
    symmetric: bool = True,
    restricted: bool = True,
    form: AsymmetricForm = "offset",
    clip: ClipRange | None = None,
    rounding: Rounding = "half_even",
    scale_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, QParams]:
    """Round every element of ``w`` to the nearest code.

    Args:
        w: float tensor of any shape (a (N, K) Linear weight, an (O, I, kh, kw) conv kernel).
        qtype: integer code type (e.g. ``get_qtype("int4")``; uint for asymmetric is fine).
        granularity: which elements share parameters (``weight_granularity(group_size)`` gives
            the per-channel / per-group layouts GPTQ produces, to compare like for like).
        symmetric, restricted, form, clip, rounding: as in ``lowbit.formats.affine``.
        scale_dtype: storage dtype of scale and offset; they are rounded to it before the
            codes are computed, so the codes match the stored parameters.

    Returns:
        (codes, qparams): codes of ``w``'s shape (int8/uint8), qparams of
        ``param_shape(w.shape, granularity)`` (scale and offset widened to float32); with
        float32 scales ``dequantize(codes, qparams) == fake_quantize(w, choose_qparams(...))``.
    """
    fast = _fused_int8(w, qtype, granularity, symmetric, restricted, clip, rounding, scale_dtype)
    if fast is not None:
        return fast
    qp = choose_qparams(
        w, qtype, granularity, symmetric=symmetric, restricted=restricted, form=form, clip=clip
    )
    scale = widen(to_storage(qp.scale, scale_dtype, name="scale", nonzero=True))
    offset = qp.offset
    if offset is not None:
        offset = widen(to_storage(offset, scale_dtype, name="offset"))
    qp = dataclasses.replace(qp, scale=scale, offset=offset)
    return quantize(w, qp, rounding=rounding), qp


def rtn_tensor(
    w: torch.Tensor, qtype: IntType, granularity: Granularity, **options: Any
) -> IntPackedTensor:
    """``rtn_quantize(w, qtype, granularity, **options)`` stored as an ``IntPackedTensor``."""
    codes, qp = rtn_quantize(w, qtype, granularity, **options)
    return IntPackedTensor.from_codes(
        codes, qp, scale_dtype=options.get("scale_dtype", torch.float32)
    )


def _fused_int8(w, qtype, granularity, symmetric, restricted, clip, rounding, scale_dtype):
    """(codes, qparams) from formats.fused for the options it implements (symmetric
    restricted int8 per output channel, half to even, no clip, float32 in and out), else None.
    (Its int4 codec is not used: it packs q + 7, the container stores q - qtype.qmin.)"""
    if not (
        isinstance(w, torch.Tensor)
        and w.dtype == torch.float32
        and w.dim() >= 2
        and w.numel() > 0
        and scale_dtype == torch.float32
        and symmetric
        and restricted
        and clip is None
        and rounding == "half_even"
        and qtype == _INT8
        and isinstance(granularity, PerAxis)
        and granularity.axis in (0, -w.dim())
    ):
        return None
    codes, scale = fused.quantize_int8_per_channel(w)
    return codes, QParams(scale, qtype, granularity, -qtype.qmax, qtype.qmax)
