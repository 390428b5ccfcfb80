"""How many bytes a (possibly quantized) model needs: what lowbit.save would store."""

from __future__ import annotations

import torch
from torch import nn

from lowbit.tensors.base import storage_key


def model_nbytes(model: nn.Module) -> int:
    """Bytes of every tensor the model needs to run: quantized modules count their stored
    QTensors and parameters (``to_state``), other modules their parameters and buffers.
    A tensor shared by two modules (a tied LM head) counts once, as lowbit.save stores it."""
    seen: set[tuple] = set()
    quantized: list[str] = []
    stored: list[torch.Tensor] = []
    for name, module in model.named_modules():
        if any(name.startswith(p + ".") for p in quantized):
            continue
        if hasattr(module, "to_state") and name:
            stored += module.to_state()[0].values()
            quantized.append(name)
    prefixes = tuple(f"{n}." for n in quantized)
    stored += [t for key, t in model.state_dict().items() if not key.startswith(prefixes)]
    total = 0
    for t in stored:
        if storage_key(t) not in seen:
            seen.add(storage_key(t))
            total += t.numel() * t.element_size()
    return total
