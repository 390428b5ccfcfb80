"""L4 execution: the kernel registry, its entries, and ``explain``.

``DEFAULT_REGISTRY`` holds, per op, the fast entries (torch quantized engine int8, aten
weight-only int8/int4) and a reference entry (dequantize + float op) that applies to every
weight kind. ``select_kernel`` picks the highest-priority entry that applies and returns
every entry it looked at with its reason; see docs/decisions.md ("Kernels").
"""

from __future__ import annotations

from typing import Any

from lowbit.kernels.embedding import EMBEDDING_ENTRIES
from lowbit.kernels.explain import KernelRow, KernelTable, explain
from lowbit.kernels.int8 import INT8_ENTRIES
from lowbit.kernels.memory import retain_freed_memory
from lowbit.kernels.reference import REFERENCE_ENTRIES, REFERENCE_NAME
from lowbit.kernels.registry import (
    MODES,
    OPS,
    Considered,
    KernelEntry,
    KernelRegistry,
    LayerSpec,
    activation_qparams,
    check_activation_qparams,
    describe_weight,
    explain_choice,
    qparams_from_dict,
    qparams_to_dict,
    quiet_quantized_warnings,
)
from lowbit.kernels.weight_only import WEIGHT_ONLY_ENTRIES
from lowbit.tensors import QTensor

DEFAULT_REGISTRY = KernelRegistry(
    INT8_ENTRIES + WEIGHT_ONLY_ENTRIES + EMBEDDING_ENTRIES + REFERENCE_ENTRIES
)


def select_kernel(
    op: str,
    weight: QTensor | None,
    mode: str,
    *,
    kernel: str | None = None,
    registry: KernelRegistry | None = None,
    **facts: Any,
) -> tuple[KernelEntry, list[Considered]]:
    """The kernel for one layer and every entry considered, with the reason for each.

    Args:
        op: "linear", "conv2d" or "add".
        weight: the layer's QTensor (None for "add").
        mode: "weight_only", "dynamic" or "static".
        kernel: force the entry with this name (InvalidSpecError if it does not apply).
        registry: the entries to choose from (default: DEFAULT_REGISTRY).
        facts: the other LayerSpec fields (relu, stride, ..., input_qparams, output_qparams).
    """
    reg = DEFAULT_REGISTRY if registry is None else registry
    return reg.select(op, weight, mode, kernel=kernel, **facts)


__all__ = [
    "DEFAULT_REGISTRY",
    "MODES",
    "OPS",
    "REFERENCE_NAME",
    "Considered",
    "KernelEntry",
    "KernelRegistry",
    "KernelRow",
    "KernelTable",
    "LayerSpec",
    "activation_qparams",
    "check_activation_qparams",
    "describe_weight",
    "explain",
    "explain_choice",
    "qparams_from_dict",
    "qparams_to_dict",
    "quiet_quantized_warnings",
    "retain_freed_memory",
    "select_kernel",
]
