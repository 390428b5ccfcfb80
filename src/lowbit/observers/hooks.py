"""Feed an observer from a module's inputs or outputs while a ``with`` block runs.

The hook only reads: it returns None, so PyTorch keeps the module's own inputs and outputs,
and the observer works on detached tensors, so observing never changes what the model
computes or its gradients.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import nn

from lowbit.errors import InvalidInputError, InvalidSpecError
from lowbit.observers.base import Observer
from lowbit.observers.registry import make_observer

Target = Literal["input", "output"]


def _first_tensor(value: Any) -> torch.Tensor | None:
    """The first tensor in a tensor, tuple/list or dict (e.g. a Hugging Face ModelOutput)."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, Mapping):
        value = list(value.values())
    if isinstance(value, Sequence) and not isinstance(value, str):
        for item in value:
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


class ObserverHook:
    """A forward hook that feeds ``observer`` with the first tensor of ``module``'s
    positional inputs from number ``arg`` on (``on="input"``, a forward pre-hook; ``arg=1``
    observes the second input of a two-input module such as ``lowbit.nn.Add``) or of its
    output. It is the one calibration hook: ``lowbit.recipes`` observes static PTQ, GPTQ,
    AWQ and SmoothQuant inputs through it.

    Use as a context manager (``with ObserverHook(layer, obs) as obs: model(x)``), which
    removes the hook on exit even after an error, or call ``attach()``/``detach()``.
    """

    def __init__(
        self, module: nn.Module, observer: Observer, *, on: Target = "output", arg: int = 0
    ) -> None:
        if on not in ("input", "output"):
            raise InvalidSpecError(f"on must be 'input' or 'output', got {on!r}")
        if isinstance(arg, bool) or not isinstance(arg, int) or arg < 0:
            raise InvalidSpecError(f"arg must be an input number >= 0, got {arg!r}")
        self.module = module
        self.observer = observer
        self.on = on
        self.arg = arg
        self._handle: torch.utils.hooks.RemovableHandle | None = None

    @property
    def attached(self) -> bool:
        return self._handle is not None

    def _feed(self, value: Any) -> None:
        tensor = _first_tensor(value)
        if tensor is None:
            raise InvalidInputError(
                f"the {self.on} of {type(self.module).__name__} holds no tensor to observe; "
                "hook a module whose input/output is a tensor"
            )
        self.observer.observe(tensor)

    def _pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self._feed(args[self.arg :] if args else kwargs)

    def _post_hook(self, module: nn.Module, args: tuple, output: Any) -> None:
        self._feed(output)

    def attach(self) -> Observer:
        """Register the hook; return the observer."""
        if self._handle is not None:
            raise InvalidSpecError("this ObserverHook is already attached; detach() it first")
        if self.on == "input":
            self._handle = self.module.register_forward_pre_hook(self._pre_hook, with_kwargs=True)
        else:
            self._handle = self.module.register_forward_hook(self._post_hook)
        return self.observer

    def detach(self) -> None:
        """Remove the hook (does nothing when it is not attached)."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def __enter__(self) -> Observer:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()


def observe_module(
    module: nn.Module, observer: Observer | str, *, on: Target = "output", **kwargs: Any
) -> ObserverHook:
    """An ``ObserverHook`` on ``module`` for an observer instance or a registered name
    (``kwargs`` go to ``make_observer``).

    Example::

        with observe_module(model.fc1, "percentile", on="input", percentile=99.9) as obs:
            for batch in calibration:
                model(batch)
        qp = obs.qparams(get_qtype("int8"))
    """
    if isinstance(observer, str):
        observer = make_observer(observer, **kwargs)
    elif kwargs:
        raise InvalidSpecError(
            f"observer options {sorted(kwargs)} only apply when the observer is given by name"
        )
    return ObserverHook(module, observer, on=on)
