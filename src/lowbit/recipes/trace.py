"""Which module feeds which: one forward pass with hooks on the leaf modules and a
TorchFunctionMode that sees the functional code between them (``x + y``, ``torch.flatten``),
following tensors by identity. No fx tracing, so it works on any model that runs."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from lowbit.recipes.batches import run_batch

FUNCTION_PREFIX = "fn:"


@dataclass
class ModuleFlow:
    """What one forward pass showed.

    Attributes:
        order: node names in the order they first ran: leaf module names, and functional
            calls made outside any leaf module as "fn:<name>#<k>".
        calls: how many times each node ran.
        consumers: producer -> the nodes that took its output as input.
        output_is_model_output: nodes whose output left the model unchanged.
    """

    order: list[str] = field(default_factory=list)
    calls: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    consumers: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    output_is_model_output: set[str] = field(default_factory=set)

    def only_consumer(self, producer: str) -> str | None:
        """The single node fed by ``producer``'s output, if exactly one is."""
        users = self.consumers.get(producer, [])
        return users[0] if len(users) == 1 else None


def function_name(node: str) -> str | None:
    """ "flatten" for a node "fn:flatten#3"; None for a module node."""
    if not node.startswith(FUNCTION_PREFIX):
        return None
    return node[len(FUNCTION_PREFIX) :].partition("#")[0]


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, tuple | list):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return []


class _Recorder:
    def __init__(self, flow: ModuleFlow) -> None:
        self.flow = flow
        self.producer_of: dict[int, str] = {}
        self.keep_alive: list[torch.Tensor] = []  # ids stay unique while the pass runs
        self.depth = 0  # > 0 inside a leaf module: its own torch calls are not recorded
        self.n_functions = 0

    def record(self, node: str, inputs: list[torch.Tensor], outputs: list[torch.Tensor]) -> None:
        flow = self.flow
        if flow.calls[node] == 0:
            flow.order.append(node)
        flow.calls[node] += 1
        for t in inputs:
            src = self.producer_of.get(id(t))
            if src is not None and src != node:
                flow.consumers[src].append(node)
        for t in outputs:
            self.producer_of[id(t)] = node
            self.keep_alive.append(t)


class _FunctionSpy(TorchFunctionMode):
    """Records torch functions called outside leaf modules that return tensors."""

    def __init__(self, recorder: _Recorder) -> None:
        super().__init__()
        self.recorder = recorder

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        rec = self.recorder
        if rec.depth == 0:
            outputs = _tensors(out)
            inputs = _tensors(args) + _tensors(kwargs)
            if outputs and any(id(t) in rec.producer_of for t in inputs):
                rec.n_functions += 1
                name = getattr(func, "__name__", "function")
                rec.record(f"{FUNCTION_PREFIX}{name}#{rec.n_functions}", inputs, outputs)
        return out


def trace_flow(model: nn.Module, example: Any, atomic: tuple[type, ...] = ()) -> ModuleFlow:
    """Run ``model`` on one example batch and record how its leaf modules connect.

    Leaves are modules without children, and modules of the ``atomic`` types (whose children
    are then not looked into).
    """
    flow = ModuleFlow()
    rec = _Recorder(flow)

    def enter(module: nn.Module, args: tuple, kwargs: dict) -> None:
        rec.depth += 1

    def leave(name: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            rec.depth -= 1
            rec.record(name, _tensors(args) + _tensors(kwargs), _tensors(output))

        return hook

    handles = []
    inside_atomic: list[str] = []
    for n, m in model.named_modules():
        if not n or any(n.startswith(p + ".") for p in inside_atomic):
            continue
        if isinstance(m, atomic):
            inside_atomic.append(n)
        elif next(m.children(), None) is not None:
            continue
        handles.append(m.register_forward_pre_hook(enter, with_kwargs=True))
        handles.append(m.register_forward_hook(leave(n), with_kwargs=True))
    try:
        with torch.no_grad(), _FunctionSpy(rec):
            # model inputs count as produced by "input" so functional uses of them are seen
            for t in _tensors(example):
                rec.producer_of[id(t)] = "input"
            out = run_batch(model, example)
    finally:
        for h in handles:
            h.remove()
    for t in _tensors(out):
        if id(t) in rec.producer_of:
            flow.output_is_model_output.add(rec.producer_of[id(t)])
    return flow
