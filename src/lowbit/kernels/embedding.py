"""Embedding lookups from an int8 per-row table: gather the int8 rows, scale only those.
The table stays int8 in memory (1 byte per weight); only the looked-up rows become float."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lowbit.formats.granularity import PerAxis
from lowbit.kernels.registry import KernelEntry, LayerSpec
from lowbit.tensors import IntPackedTensor, QTensor


def _applies(weight: QTensor | None, spec: LayerSpec) -> str | None:
    if not isinstance(weight, IntPackedTensor):
        return "needs an integer weight (IntPackedTensor)"
    if weight.qtype.bits != 8 or weight.form != "symmetric":
        return f"needs int8 symmetric codes, got {weight.qtype.name} {weight.form}"
    if weight.granularity != PerAxis(0):
        return "needs one scale per row (PerAxis(0))"
    return None


def _prepare(weight: IntPackedTensor, bias: torch.Tensor | None, spec: LayerSpec) -> dict:
    return {"codes": weight.codes(), "scale": weight.scale.float().reshape(-1, 1)}


def _run(state: dict, ids: torch.Tensor) -> torch.Tensor:
    rows = F.embedding(ids, state["codes"])  # int8 gather
    return rows.float() * F.embedding(ids, state["scale"])


EMBEDDING_ENTRIES: tuple[KernelEntry, ...] = (
    KernelEntry(
        op="embedding",
        name="int8 row gather (codes kept int8, looked-up rows scaled)",
        priority=50,
        applies=_applies,
        prepare=_prepare,
        run=_run,
        summary="int8 table in memory; F.embedding on the codes, times the row scales",
    ),
)
