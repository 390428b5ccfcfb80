"""QuantEmbedding: an embedding table stored quantized (int8 per row by default)."""

from __future__ import annotations

from typing import Any

from torch import nn

from lowbit.errors import InvalidInputError
from lowbit.kernels import KernelRegistry, LayerSpec
from lowbit.nn.base import KernelModule
from lowbit.tensors import QTensor


class QuantEmbedding(KernelModule):
    """Lookup of rows of a quantized table [num_embeddings, dim]; returns float32 rows.

    Args:
        weight: 2-D QTensor (int8 per row gets the int8 row-gather kernel, anything else the
            reference kernel).
        padding_idx: kept for the record and in the saved state (lookups are plain; no
            gradient flows here).
        kernel, registry: as in QuantLinear.
    """

    op = "embedding"
    state_attributes = ("padding_idx",)

    def __init__(
        self,
        weight: QTensor,
        *,
        padding_idx: int | None = None,
        kernel: str | None = None,
        registry: KernelRegistry | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(weight, QTensor) or len(weight.shape) != 2:
            raise InvalidInputError("QuantEmbedding needs a 2-D QTensor [num_embeddings, dim]")
        self.padding_idx = padding_idx
        self._setup(weight, None, LayerSpec(op="embedding", mode="weight_only"), kernel, registry)

    @classmethod
    def from_float(cls, module: nn.Embedding, weight: QTensor, **kwargs: Any) -> QuantEmbedding:
        """Replace an nn.Embedding given its quantized table."""
        if not isinstance(module, nn.Embedding):
            raise InvalidInputError(
                f"from_float needs an nn.Embedding, got {type(module).__name__}"
            )
        if tuple(weight.shape) != tuple(module.weight.shape):
            raise InvalidInputError("the quantized table's shape differs from the embedding's")
        return cls(weight, padding_idx=module.padding_idx, **kwargs)
