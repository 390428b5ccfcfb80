"""Turn a float weight into the QTensor its WeightSpec asks for: integer formats through the
one RTN (``lowbit.algorithms.rtn``), the others through their containers' casts."""

from __future__ import annotations

from typing import Any

import torch

from lowbit.algorithms.rtn import rtn_tensor
from lowbit.errors import InvalidSpecError
from lowbit.formats.granularity import PerAxis, PerGroup
from lowbit.formats.qtypes import CodebookType, FloatType, IntType, LevelsType, get_qtype
from lowbit.recipes.spec import WeightSpec
from lowbit.tensors import (
    CodebookPackedTensor,
    Float8Tensor,
    LevelsPackedTensor,
)
from lowbit.tensors.base import QTensor

_SCALE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def scale_dtype_of(spec: WeightSpec) -> torch.dtype:
    """The torch dtype of a spec's stored scales."""
    dtype = _SCALE_DTYPES.get(spec.scale_dtype)
    if dtype is None:
        raise InvalidSpecError(
            f"scale_dtype {spec.scale_dtype!r} is not one of {', '.join(_SCALE_DTYPES)}"
        )
    return dtype


def quantize_weight(weight: torch.Tensor, spec: WeightSpec, *, clip: Any = None) -> QTensor:
    """The QTensor of ``weight``.

    Conv kernels (O, I, kh, kw) under a group spec are quantized per output channel instead:
    groups along a conv's last axis would split kernel rows, and no conv kernel reads
    groups (docs/decisions.md). ``clip`` (integer formats) is a clip range of the
    parameter shape, e.g. AWQ's searched ranges.
    """
    qtype = get_qtype(spec.format)
    scale_dtype = scale_dtype_of(spec)
    w = weight.detach().to(torch.float32)
    granularity = spec.granularity
    if isinstance(granularity, PerGroup) and w.dim() > 2:
        granularity = PerAxis(0)
    if isinstance(qtype, IntType):
        qtype = IntType(qtype.bits, spec.symmetric)
        return rtn_tensor(
            w,
            qtype,
            granularity,
            symmetric=spec.symmetric,
            form=spec.form,  # type: ignore[arg-type]
            scale_dtype=scale_dtype,
            clip=clip,
        )
    if isinstance(qtype, CodebookType):
        return CodebookPackedTensor.quantize(w, qtype, granularity, scale_dtype=scale_dtype)
    if isinstance(qtype, LevelsType):
        return LevelsPackedTensor.quantize(w, qtype, granularity, scale_dtype=scale_dtype)
    if isinstance(qtype, FloatType) and qtype.scaled:
        return Float8Tensor.quantize(w, qtype, granularity, scale_dtype=scale_dtype)
    raise InvalidSpecError(
        f"weight format {spec.format!r} is a plain cast; use the fp16/bf16 presets instead"
    )
