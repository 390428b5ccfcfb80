"""Model surgery shared by the layers above nn: recipes (L5) put quantized modules in place,
lowbit.io (L6) rebuilds a saved model's structure; both replace sub-modules by name."""

from __future__ import annotations

from torch import nn

__all__ = ["set_module"]


def set_module(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Replace the sub-module at qualified ``name``; returns the model, which is ``new``
    itself when ``name`` is "" (the model is a bare Linear or Conv2d)."""
    if not name:
        return new
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
    return model
