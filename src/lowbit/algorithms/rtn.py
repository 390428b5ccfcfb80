"""Round-to-nearest (RTN) weight quantization: the baseline every other algorithm must beat.

Each weight is rounded independently with parameters chosen from the weight's own range, per
output channel (``group_size=None``) or per group of ``group_size`` consecutive inputs. The
arithmetic is ``lowbit.formats.affine``'s; this module only picks the granularity, so its
options mean the same as ``gptq_quantize``'s and the two compare like for like.
"""

from __future__ import annotations

import torch

from lowbit.errors import InvalidInputError, InvalidSpecError
from lowbit.formats.affine import AsymmetricForm, QParams, choose_qparams, quantize
from lowbit.formats.granularity import Granularity, PerAxis, PerGroup
from lowbit.formats.qtypes import IntType

__all__ = ["rtn_quantize", "weight_granularity"]


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
    weight: torch.Tensor,
    *,
    qtype: IntType,
    group_size: int | None,
    symmetric: bool = True,
    restricted: bool = True,
    form: AsymmetricForm = "offset",
) -> tuple[torch.Tensor, QParams]:
    """Round every weight to the nearest code.

    Args:
        weight: (N, K) float tensor (out_features, in_features).
        qtype: integer code type (e.g. ``get_qtype("int4")``; uint for asymmetric is fine).
        group_size: inputs per scale, or None for one scale per output channel.
        symmetric, restricted, form: as in ``lowbit.formats.affine.choose_qparams``.

    Returns:
        (codes, qparams): codes (N, K) int8/uint8, qparams with PerGroup(group_size) or
        PerAxis(0); ``IntPackedTensor.from_codes(codes, qparams)`` stores them.
    """
    check_weight(weight)
    qp = choose_qparams(
        weight.float(),
        qtype,
        weight_granularity(group_size),
        symmetric=symmetric,
        restricted=restricted,
        form=form,
    )
    return quantize(weight.float(), qp), qp
