"""Turn a float weight into the QTensor its WeightSpec asks for, through the one RTN
(``lowbit.algorithms.rtn``)."""

from __future__ import annotations

from typing import Any

import torch

from lowbit.algorithms.rtn import rtn_tensor
from lowbit.errors import InvalidSpecError
from lowbit.recipes.spec import WeightSpec
from lowbit.tensors.base import QTensor


def quantize_weight(weight: torch.Tensor, spec: WeightSpec, *, clip: Any = None) -> QTensor:
    """The QTensor of ``weight``.

    Conv kernels (O, I, kh, kw) under a group spec are quantized per output channel instead
    (``WeightFormat.for_shape``; docs/decisions.md). ``clip`` (integer formats) is a clip
    range of the parameter shape, e.g. AWQ's searched ranges.
    """
    fmt = spec.weight_format()
    if fmt.family == "cast":
        raise InvalidSpecError(
            f"weight format {spec.format!r} is a plain cast; use the fp16/bf16 presets instead"
        )
    w = weight.detach().to(torch.float32)
    return rtn_tensor(w, fmt.for_shape(tuple(w.shape)), clip=clip)
