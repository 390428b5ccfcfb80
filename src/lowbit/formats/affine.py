"""Integer (affine) quantization: the arithmetic every integer format in lowbit rests on.

Formulas (b bits, clip range L or [Lmin, Lmax], codes q, dequantized x'):

* symmetric, restricted range (default; codes in ±(2^(b-1) - 1), zero is exact, the grid is
  symmetric):  s = 2L / (2^b - 2),  q = clamp(round(x / s)),  x' = s·q
* symmetric, full range (codes -2^(b-1) .. 2^(b-1) - 1):  s = 2L / (2^b - 1)
* asymmetric, offset form (GGUF Q4_1 style, default asymmetric form):
  s = (Lmax - Lmin) / (2^b - 1),  q = clamp(round((x - Lmin) / s)),  x' = s·q + Lmin
* asymmetric, integer zero point (PyTorch / ONNX style; [Lmin, Lmax] is widened to hold 0 so
  that zero is exact):  s = (Lmax - Lmin) / (2^b - 1),  z = qmin - round(Lmin / s),
  q = clamp(round(x / s) + z),  x' = s·(q - z)

L (or Lmin/Lmax) is the given clip range, else taken from the tensor per granularity block
(L = max|x|, Lmin = min x, Lmax = max x). A block with zero range gets s = 1 so that scales
stay finite and reconstruction stays exact.

Rounding is round-half-to-even by default (torch.round, IEEE 754's default). "half_away"
(C's roundf, used by ggml's Q8_0) and "half_up" (floor(v + 0.5)) can be chosen.

Inside the clip range, |x - x'| <= s/2 for every mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from lowbit.errors import InvalidSpecError
from lowbit.formats.checks import as_float, check_finite
from lowbit.formats.granularity import (
    Granularity,
    PerTensor,
    broadcast_to,
    from_blocks,
    params_to_blocks,
    to_blocks,
)
from lowbit.formats.qtypes import IntType

Rounding = Literal["half_even", "half_away", "half_up"]
AsymmetricForm = Literal["offset", "zero_point"]
ClipRange = float | tuple[float, float] | tuple[torch.Tensor, torch.Tensor] | torch.Tensor


@dataclass(frozen=True)
class QParams:
    """Quantization parameters of one tensor.

    Attributes:
        scale: float32 tensor of ``param_shape(x.shape, granularity)``.
        qtype: the integer format of the codes.
        granularity: which elements share a scale.
        zero_point: integer zero point (int32, same shape as scale) or None.
        offset: float offset Lmin (same shape as scale) for the offset form, or None.
        qmin, qmax: the code range actually used (restricted symmetric uses ±(2^(b-1) - 1)).
    """

    scale: torch.Tensor
    qtype: IntType
    granularity: Granularity
    qmin: int
    qmax: int
    zero_point: torch.Tensor | None = None
    offset: torch.Tensor | None = None

    @property
    def symmetric(self) -> bool:
        return self.zero_point is None and self.offset is None


def round_half(v: torch.Tensor, rounding: Rounding = "half_even") -> torch.Tensor:
    """Round to integers with the given tie rule (see module docstring)."""
    if rounding == "half_even":
        return torch.round(v)
    if rounding == "half_away":
        return torch.sign(v) * torch.floor(v.abs() + 0.5)
    if rounding == "half_up":
        return torch.floor(v + 0.5)
    raise InvalidSpecError(f"unknown rounding {rounding!r}; use half_even, half_away or half_up")


def _clip_bounds(
    x: torch.Tensor, granularity: Granularity, clip: ClipRange | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-block (lo, hi) in the blocked layout (rows, groups, 1)."""
    if clip is None:
        blocks = to_blocks(x, granularity)
        return blocks.amin(dim=-1, keepdim=True), blocks.amax(dim=-1, keepdim=True)
    if isinstance(clip, tuple):
        lo, hi = as_float(clip[0]), as_float(clip[1])
    else:
        hi = as_float(clip).abs()
        lo = -hi
    if bool((lo > hi).any()):
        raise InvalidSpecError("clip range has min > max; give the range as (min, max)")
    shape = tuple(x.shape)
    return params_to_blocks(lo, shape, granularity), params_to_blocks(hi, shape, granularity)


def choose_qparams(
    x: torch.Tensor,
    qtype: IntType,
    granularity: Granularity = PerTensor(),
    *,
    symmetric: bool = True,
    restricted: bool = True,
    form: AsymmetricForm = "offset",
    clip: ClipRange | None = None,
) -> QParams:
    """Choose scale (and zero point or offset) for ``x``.

    Args:
        x: float tensor of any shape (finite; NaN/Inf raise InvalidInputError).
        qtype: integer format of the codes; symmetric needs a signed type.
        granularity: PerTensor(), PerAxis(axis) or PerGroup(size, axis).
        symmetric: symmetric (no zero point) or asymmetric.
        restricted: symmetric only: codes ±(2^(b-1) - 1) (True) or the full signed range.
        form: asymmetric only: "offset" (x' = s·q + Lmin) or "zero_point" (x' = s·(q - z)).
        clip: a clip range L (symmetric: [-L, L]) or (Lmin, Lmax), floats or tensors of the
            parameter shape; default: the tensor's own range per block.
    """
    x = as_float(x)
    check_finite(x)
    lo, hi = _clip_bounds(x, granularity, clip)
    shape = tuple(x.shape)
    if symmetric:
        if not qtype.signed:
            raise InvalidSpecError(
                f"symmetric quantization needs a signed type, got {qtype.name}; "
                f"use int{qtype.bits} or asymmetric=True"
            )
        if restricted and qtype.bits < 2:
            raise InvalidSpecError(
                "restricted-range symmetric quantization needs >= 2 bits (1 bit would leave "
                "only the code 0); use the binary format, restricted=False, or asymmetric"
            )
        bound = torch.maximum(lo.abs(), hi.abs())
        qmin, qmax = (-qtype.qmax, qtype.qmax) if restricted else (qtype.qmin, qtype.qmax)
        scale = 2 * bound / (qmax - qmin) if not restricted else bound / qmax
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        return QParams(from_blocks(scale, shape, granularity), qtype, granularity, qmin, qmax)
    qmin, qmax = qtype.qmin, qtype.qmax
    if form == "zero_point":
        lo, hi = lo.clamp(max=0), hi.clamp(min=0)
    elif form != "offset":
        raise InvalidSpecError(f"unknown asymmetric form {form!r}; use 'offset' or 'zero_point'")
    scale = (hi - lo) / (qmax - qmin)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    if form == "offset":
        return QParams(
            from_blocks(scale, shape, granularity),
            qtype,
            granularity,
            qmin,
            qmax,
            offset=from_blocks(lo, shape, granularity),
        )
    zero_point = (qmin - torch.round(lo / scale)).clamp(qmin, qmax).to(torch.int32)
    return QParams(
        from_blocks(scale, shape, granularity),
        qtype,
        granularity,
        qmin,
        qmax,
        zero_point=from_blocks(zero_point, shape, granularity),
    )


def quantize(
    x: torch.Tensor,
    qparams: QParams,
    *,
    rounding: Rounding = "half_even",
    checked: bool = True,
) -> torch.Tensor:
    """Integer codes of ``x`` (dtype int8 for signed, uint8 for unsigned types).

    ``checked=False`` skips the NaN/Inf check, for callers that quantize many slices of a
    tensor they checked once (GPTQ's column loop)."""
    x = as_float(x)
    if checked:
        check_finite(x)
    shape = tuple(x.shape)
    g = qparams.granularity
    scale = broadcast_to(qparams.scale, shape, g)
    if qparams.offset is not None:
        v = (x - broadcast_to(qparams.offset, shape, g)) / scale + qparams.qmin
        q = round_half(v, rounding)
    else:
        q = round_half(x / scale, rounding)
        if qparams.zero_point is not None:
            q = q + broadcast_to(qparams.zero_point, shape, g)
    return q.clamp_(qparams.qmin, qparams.qmax).to(qparams.qtype.storage)


def dequantize(
    q: torch.Tensor, qparams: QParams, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Values the codes stand for: s·q, s·(q - z) or s·(q - qmin) + Lmin."""
    shape = tuple(q.shape)
    g = qparams.granularity
    scale = broadcast_to(qparams.scale, shape, g)
    qf = q.to(scale.dtype)
    if qparams.offset is not None:
        out = (qf - qparams.qmin) * scale + broadcast_to(qparams.offset, shape, g)
    elif qparams.zero_point is not None:
        out = (qf - broadcast_to(qparams.zero_point, shape, g)) * scale
    else:
        out = qf * scale
    return out.to(dtype)


def fake_quantize(
    x: torch.Tensor, qparams: QParams, *, rounding: Rounding = "half_even"
) -> torch.Tensor:
    """dequantize(quantize(x)): the float values x would take after quantization."""
    return dequantize(
        quantize(x, qparams, rounding=rounding), qparams, dtype=torch.as_tensor(x).dtype
    )
