"""How many bytes a (possibly quantized) model needs: what lowbit.save would store."""

from __future__ import annotations

from torch import nn


def model_nbytes(model: nn.Module) -> int:
    """Bytes of every tensor the model needs to run: quantized modules count their stored
    QTensors and parameters (``to_state``), other modules their parameters and buffers."""
    total = 0
    quantized: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(p + ".") for p in quantized):
            continue
        if hasattr(module, "to_state") and name:
            tensors, _ = module.to_state()
            total += sum(t.numel() * t.element_size() for t in tensors.values())
            quantized.append(name)
    prefixes = tuple(f"{n}." for n in quantized)
    for key, t in model.state_dict().items():
        if not key.startswith(prefixes):
            total += t.numel() * t.element_size()
    return total
