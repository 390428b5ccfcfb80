"""Round-to-nearest (RTN) weight quantization: the baseline every other algorithm must beat,
and the one RTN every caller uses (recipes, GPTQ's layers outside the blocks, tests).

Each weight is rounded independently with parameters chosen from its own block (per tensor,
per output channel or per group), as its ``WeightFormat`` says. The arithmetic is in
``lowbit.formats`` (affine for integers, codebook, levels, floats); this module rounds the
stored scales to their storage dtype *before* the codes are computed (so codes and stored
parameters agree) and hands the result to the family's container, which only stores it. For
int8 per output channel (symmetric, float32 scales) it takes ``lowbit.formats.fused``'s
codec, bit-identical to the affine path (its tests prove it) with fewer passes over memory.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from lowbit.errors import InvalidInputError, InvalidSpecError
from lowbit.formats import fused
from lowbit.formats.affine import (
    ClipRange,
    QParams,
    Rounding,
    choose_qparams,
    quantize,
)
from lowbit.formats.codebook import choose_absmax_scale, quantize_codebook
from lowbit.formats.floats import choose_float_scale, quantize_float
from lowbit.formats.granularity import PerAxis
from lowbit.formats.levels import choose_levels_scale, quantize_levels
from lowbit.formats.qtypes import IntType
from lowbit.formats.weight_format import WeightFormat
from lowbit.tensors import (
    CodebookPackedTensor,
    Float8Tensor,
    FloatCastTensor,
    IntPackedTensor,
    LevelsPackedTensor,
    QTensor,
)
from lowbit.tensors.base import to_storage, widen

__all__ = ["RTN_FAMILIES", "rtn_quantize", "rtn_tensor", "stored_qparams"]

_INT8 = IntType(8, True)


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
    fmt: WeightFormat,
    *,
    clip: ClipRange | None = None,
    rounding: Rounding = "half_even",
) -> tuple[torch.Tensor, QParams]:
    """Round every element of ``w`` to the nearest code of the integer format ``fmt``.

    Args:
        w: float tensor of any shape (a (N, K) Linear weight, an (O, I, kh, kw) conv kernel).
        fmt: an integer WeightFormat (``WeightFormat.of("int4", PerGroup(128))``); its
            granularity, symmetry, form, range and scale dtype are used as they are.
        clip, rounding: as in ``lowbit.formats.affine``.

    Returns:
        (codes, qparams): codes of ``w``'s shape (int8/uint8), qparams of
        ``param_shape(w.shape, fmt.granularity)`` (scale and offset rounded to
        ``fmt.scale_dtype`` before the codes are computed, then widened to float32); with
        float32 scales ``dequantize(codes, qparams) == fake_quantize(w, choose_qparams(...))``.
    """
    if fmt.family != "int":
        raise InvalidSpecError(
            f"rtn_quantize rounds integer formats, not {fmt.qtype.name}; use rtn_tensor"
        )
    fast = _fused_int8(w, fmt, clip, rounding)
    if fast is not None:
        return fast
    qp = choose_qparams(
        w,
        fmt.qtype,
        fmt.granularity,
        symmetric=fmt.symmetric,
        restricted=fmt.restricted,
        form=fmt.form,
        clip=clip,
    )
    qp = stored_qparams(qp, fmt.scale_dtype)
    return quantize(w, qp, rounding=rounding), qp


def stored_qparams(qp: QParams, scale_dtype: torch.dtype) -> QParams:
    """``qp`` with scale and offset rounded to their storage dtype (widened back to
    float32), so codes computed from it agree with what the container stores."""
    scale = widen(to_storage(qp.scale, scale_dtype, name="scale", nonzero=True))
    offset = qp.offset
    if offset is not None:
        offset = widen(to_storage(offset, scale_dtype, name="offset"))
    return dataclasses.replace(qp, scale=scale, offset=offset)


def rtn_tensor(w: torch.Tensor, fmt: WeightFormat, *, clip: ClipRange | None = None) -> QTensor:
    """``w`` rounded to the nearest value of ``fmt``, in its family's container: the one RTN
    for every format family (int: IntPackedTensor, codebook: CodebookPackedTensor, levels:
    LevelsPackedTensor, float8: Float8Tensor, cast: FloatCastTensor)."""
    if clip is not None and fmt.family != "int":
        raise InvalidSpecError(f"a clip range applies to integer formats, not {fmt.qtype.name}")
    w = w.detach()
    return _RTN_BY_FAMILY[fmt.family](w, fmt, clip)


def _rtn_int(w: torch.Tensor, fmt: WeightFormat, clip: ClipRange | None) -> QTensor:
    codes, qp = rtn_quantize(w, fmt, clip=clip)
    return IntPackedTensor.from_codes(codes, qp, scale_dtype=fmt.scale_dtype)


def _rtn_codebook(w: torch.Tensor, fmt: WeightFormat, clip: None) -> QTensor:
    """Nearest level to w / absmax per block (formats.codebook); the scale is rounded to its
    storage dtype first so the indices match the stored scale."""
    scale = to_storage(
        choose_absmax_scale(w, fmt.granularity), fmt.scale_dtype, name="scale", nonzero=True
    )
    codes = quantize_codebook(w, widen(scale), fmt.granularity, fmt.qtype)
    return CodebookPackedTensor.from_codes(
        codes, scale, qtype=fmt.qtype, granularity=fmt.granularity, scale_dtype=fmt.scale_dtype
    )


def _rtn_levels(w: torch.Tensor, fmt: WeightFormat, clip: None) -> QTensor:
    """Binary (XNOR-Net) or ternary (TWN) codes (formats.levels); the codes do not depend on
    the magnitude, so rounding it to its storage dtype is harmless."""
    scale, threshold = choose_levels_scale(w, fmt.qtype, fmt.granularity)
    codes = quantize_levels(w, threshold, fmt.qtype, fmt.granularity)
    return LevelsPackedTensor.from_codes(
        codes, scale, qtype=fmt.qtype, granularity=fmt.granularity, scale_dtype=fmt.scale_dtype
    )


def _rtn_float8(w: torch.Tensor, fmt: WeightFormat, clip: None) -> QTensor:
    """Scale by amax / fp8_max per block, then cast (formats.floats)."""
    scale = to_storage(
        choose_float_scale(w, fmt.qtype, fmt.granularity),
        fmt.scale_dtype,
        name="scale",
        nonzero=True,
    )
    data = quantize_float(w, fmt.qtype, widen(scale), fmt.granularity).contiguous()
    return Float8Tensor(data, scale, fmt.granularity)


def _rtn_cast(w: torch.Tensor, fmt: WeightFormat, clip: None) -> QTensor:
    """A plain cast to fp32/fp16/bf16 (round to nearest even)."""
    return FloatCastTensor(quantize_float(w, fmt.qtype).contiguous())


# format family -> its RTN (and so its container): the one place the choice is made;
# tests/test_formats/test_weight_format.py checks that every family has one
_RTN_BY_FAMILY: dict[str, Callable[[torch.Tensor, WeightFormat, Any], QTensor]] = {
    "int": _rtn_int,
    "codebook": _rtn_codebook,
    "levels": _rtn_levels,
    "float8": _rtn_float8,
    "cast": _rtn_cast,
}
RTN_FAMILIES: frozenset[str] = frozenset(_RTN_BY_FAMILY)


def _fused_int8(w, fmt, clip, rounding):
    """(codes, qparams) from formats.fused for the options it implements (symmetric
    restricted int8 per output channel, half to even, no clip, float32 in and out), else None.
    (Its int4 codec is not used: it packs q + 7, the container stores q - qtype.qmin.)"""
    if not (
        isinstance(w, torch.Tensor)
        and w.dtype == torch.float32
        and w.dim() >= 2
        and w.numel() > 0
        and fmt.scale_dtype == torch.float32
        and fmt.symmetric
        and fmt.restricted
        and clip is None
        and rounding == "half_even"
        and fmt.qtype == _INT8
        and isinstance(fmt.granularity, PerAxis)
        and fmt.granularity.axis in (0, -w.dim())
    ):
        return None
    codes, scale = fused.quantize_int8_per_channel(w)
    return codes, QParams(scale, _INT8, fmt.granularity, -_INT8.qmax, _INT8.qmax)
