"""A whole model cast to fp16/bf16: inputs are cast on the way in, outputs back to the
caller's float dtype, so the cast model is a drop-in replacement."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def _cast(value: Any, dtype: torch.dtype) -> Any:
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.to(dtype)
    if isinstance(value, tuple | list):
        return type(value)(_cast(v, dtype) for v in value)
    if isinstance(value, dict):
        return {k: _cast(v, dtype) for k, v in value.items()}
    return value


class CastModel(nn.Module):
    """Runs ``inner`` (already cast to ``dtype``) on inputs cast to ``dtype``; floating outputs
    come back as float32."""

    def __init__(self, inner: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.inner = inner
        self.dtype = dtype

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = self.inner(*_cast(args, self.dtype), **_cast(kwargs, self.dtype))
        return _cast(out, torch.float32)

    def extra_repr(self) -> str:
        return f"dtype={self.dtype}"
