"""L1: QTensor containers, one flat class per (format family x packing), and the registry that
rebuilds any of them from a flat tensor dict plus metadata (see base.QTensor.to_dict)."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import torch

from lowbit.errors import UnsupportedFormatError
from lowbit.tensors.base import QTensor, granularity_from_dict, granularity_to_dict
from lowbit.tensors.codebook import CodebookPackedTensor
from lowbit.tensors.floats import Float8Tensor, FloatCastTensor
from lowbit.tensors.integer import IntPackedTensor
from lowbit.tensors.levels import LevelsPackedTensor

# metadata["kind"] -> class: data, read-only, so dispatch is a lookup and not an if-ladder.
QTENSOR_KINDS: Mapping[str, type[QTensor]] = MappingProxyType(
    {
        cls.kind: cls
        for cls in (
            IntPackedTensor,
            Float8Tensor,
            FloatCastTensor,
            CodebookPackedTensor,
            LevelsPackedTensor,
        )
    }
)


def qtensor_from_dict(
    tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, Any], prefix: str = ""
) -> QTensor:
    """Rebuild whichever QTensor ``to_dict(prefix)`` wrote, chosen by ``metadata["kind"]``."""
    kind = metadata.get("kind")
    if kind not in QTENSOR_KINDS:
        known = ", ".join(QTENSOR_KINDS)
        raise UnsupportedFormatError(
            f"unknown QTensor kind {kind!r}; known kinds: {known} (a newer lowbit may read it)"
        )
    return QTENSOR_KINDS[kind].from_dict(tensors, metadata, prefix)


__all__ = [
    "QTENSOR_KINDS",
    "CodebookPackedTensor",
    "Float8Tensor",
    "FloatCastTensor",
    "IntPackedTensor",
    "LevelsPackedTensor",
    "QTensor",
    "granularity_from_dict",
    "granularity_to_dict",
    "qtensor_from_dict",
]
