"""Quality metrics: top-1 accuracy and signal-to-quantization-noise ratio (``sqnr_db``,
defined once in ``lowbit.formats.sqnr`` and re-exported here)."""

from __future__ import annotations

import torch
from torch import nn

from lowbit.errors import InvalidInputError
from lowbit.formats.sqnr import sqnr_db

__all__ = ["accuracy", "sqnr_db"]


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> float:
    """Top-1 accuracy in percent of ``model`` on inputs ``x`` with integer labels ``y``."""
    if len(x) != len(y) or len(y) == 0:
        raise InvalidInputError(f"need as many labels as inputs (got {len(x)} and {len(y)})")
    correct = 0
    for start in range(0, len(y), batch_size):
        logits = model(x[start : start + batch_size])
        correct += int((logits.argmax(dim=-1) == y[start : start + batch_size]).sum())
    return 100.0 * correct / len(y)
