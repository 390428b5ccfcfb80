"""Quality metrics: top-1 accuracy and signal-to-quantization-noise ratio."""

from __future__ import annotations

import math

import torch
from torch import nn

from lowbit.errors import InvalidInputError


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


def sqnr_db(reference: torch.Tensor, approximation: torch.Tensor) -> float:
    """10·log10(‖ref‖² / ‖ref − approx‖²) in dB; inf when they are identical."""
    ref = reference.detach().double()
    noise = (ref - approximation.detach().double()).pow(2).sum().item()
    signal = ref.pow(2).sum().item()
    if noise == 0:
        return math.inf
    return 10 * math.log10(signal / noise) if signal > 0 else -math.inf
