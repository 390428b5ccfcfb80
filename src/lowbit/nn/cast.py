"""A whole model cast to fp16/bf16 in place, keeping its class: floating inputs are cast to
the model's dtype on the way in and floating outputs back to float32 on the way out (two
hooks on the root module), so the cast model is a drop-in replacement whose methods
(``generate``) and output objects (``.logits``, ``.last_hidden_state``) stay as they were."""

from __future__ import annotations

import copy
import functools
from typing import Any

import torch
from torch import nn


def _cast(value: Any, dtype: torch.dtype) -> Any:
    """``value`` with every floating tensor inside cast to ``dtype``; containers keep their
    type (named tuples, dict subclasses such as transformers' ModelOutput)."""
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(_cast(v, dtype) for v in value))
    if isinstance(value, tuple | list):
        return type(value)(_cast(v, dtype) for v in value)
    if isinstance(value, dict):
        out = copy.copy(value)  # a shallow copy keeps the class and never edits the input
        for key, item in value.items():
            out[key] = _cast(item, dtype)
        return out
    return value


def _cast_inputs(
    dtype: torch.dtype, module: nn.Module, args: tuple, kwargs: dict
) -> tuple[tuple, dict]:
    return _cast(args, dtype), _cast(kwargs, dtype)


def _cast_outputs(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
    return _cast(output, torch.float32)


def cast_model(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Cast ``model`` to ``dtype`` in place and return it: its parameters and buffers become
    ``dtype``; floating inputs are cast to ``dtype`` and floating outputs to float32 by hooks
    on ``model``. ``model.lowbit_cast_dtype`` records the dtype (for save/load)."""
    model.to(dtype)
    model.register_forward_pre_hook(functools.partial(_cast_inputs, dtype), with_kwargs=True)
    model.register_forward_hook(_cast_outputs, with_kwargs=True)
    model.lowbit_cast_dtype = str(dtype).removeprefix("torch.")  # type: ignore[assignment]
    return model
