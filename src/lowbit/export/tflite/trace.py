"""The model's forward as a torch.fx graph, lowbit's quantized modules (and torch.nn's) kept
as leaves, run once on the example inputs to learn every tensor's shape."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import fx, nn

from lowbit.errors import InvalidInputError
from lowbit.nn.base import KernelModule


class _LeafTracer(fx.Tracer):
    """torch.fx tracer that keeps lowbit's quantized modules whole (torch.nn's already are)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, KernelModule) or super().is_leaf_module(m, module_qualified_name)


class _ShapeRecorder(fx.Interpreter):
    """Runs the traced graph once and keeps each node's output shape."""

    def __init__(self, module: fx.GraphModule) -> None:
        super().__init__(module)
        self.shapes: dict[str, tuple[int, ...]] = {}

    def run_node(self, n: fx.Node) -> object:
        result = super().run_node(n)
        if isinstance(result, torch.Tensor):
            self.shapes[n.name] = tuple(result.shape)
        return result


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode (dropout off, as the .tflite has it) for the block; every
    module's training flag is restored afterwards, so the caller's model is left as it was."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in flags:
            m.training = training


def trace(model: nn.Module, example: torch.Tensor) -> tuple[fx.GraphModule, dict]:
    """The model's forward as an fx graph (quantized modules as leaves) and the output shape
    of every node on ``example`` (call it under ``eval_mode``)."""
    try:
        graph = _LeafTracer().trace(model)
    except Exception as exc:  # fx raises plain TypeError/TraceError on data-dependent code
        raise InvalidInputError(
            f".tflite export follows {type(model).__name__}.forward with torch.fx, which "
            f"could not trace it ({type(exc).__name__}: {exc}); keep the forward a straight "
            "sequence of module calls (no data-dependent Python control flow)"
        ) from exc
    gm = fx.GraphModule(model, graph)
    recorder = _ShapeRecorder(gm)
    with torch.no_grad():
        recorder.run(example)
    return gm, recorder.shapes
