"""The exporter's built-in check: onnx.checker, then ONNX Runtime on the example inputs
against lowbit's PyTorch model (SQNR and max abs error of every output together)."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils import _pytree as pytree

from lowbit.errors import LowbitError
from lowbit.export.onnx.api import Verification
from lowbit.export.onnx.runtime import ort_session, require_onnx
from lowbit.formats.sqnr import sqnr_db

MIN_SQNR_DB = 30.0  # issue 14's acceptance floor for every exported graph
# Below the floor, a graph still passes when it agrees with lowbit's model as well as
# lowbit's own reference kernels do (less this margin): docs/decisions.md, issue 14.
NOISE_MARGIN_DB = 2.0


class ExportVerificationError(LowbitError):
    """The exported graph, run in ONNX Runtime, does not match lowbit's PyTorch model."""


def split_inputs(example_inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """(args, kwargs) from a tensor, a tuple/list of tensors or a dict of keyword tensors."""
    if isinstance(example_inputs, Mapping):
        return (), {k: v for k, v in example_inputs.items() if v is not None}
    if isinstance(example_inputs, tuple | list):
        return tuple(example_inputs), {}
    return (example_inputs,), {}


def tensor_leaves(value: Any) -> list[torch.Tensor]:
    """The tensors of a (nested) model output, in the order torch's exporter flattens them."""
    return [t for t in pytree.tree_leaves(value) if isinstance(t, torch.Tensor)]


def ort_feeds(session: Any, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The example inputs as ONNX Runtime feeds: by name for keywords, else in order."""
    names = [i.name for i in session.get_inputs()]
    if kwargs and set(names) <= set(kwargs):
        return {n: kwargs[n].detach().cpu().numpy() for n in names}
    flat = tensor_leaves((args, kwargs))
    if len(flat) != len(names):
        raise ExportVerificationError(
            f"the graph takes {len(names)} inputs ({', '.join(names)}) but the example "
            f"inputs hold {len(flat)} tensors; pass them as a dict of those names"
        )
    return {n: t.detach().cpu().numpy() for n, t in zip(names, flat, strict=True)}


def run_ort(path: Path, example_inputs: Any) -> list[torch.Tensor]:
    """The graph's outputs on ``example_inputs`` in ONNX Runtime (all optimizations on)."""
    args, kwargs = split_inputs(example_inputs)
    session = ort_session(path)
    return [torch.from_numpy(o) for o in session.run(None, ort_feeds(session, args, kwargs))]


def attended(t: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The rows of an output [batch, seq, ...] at the positions ``mask`` (an attention mask
    [batch, seq]) attends; other outputs whole. Padded positions hold values no consumer
    reads, as unspecified in PyTorch as in the graph."""
    if mask is None or tuple(t.shape[:2]) != tuple(mask.shape):
        return t.reshape(-1)
    return t[mask.bool()].reshape(-1)


def compare(
    reference: list[torch.Tensor], outputs: list[torch.Tensor], mask: torch.Tensor | None = None
) -> tuple[float, float]:
    """(SQNR dB, max abs error) of all outputs flattened together (attended positions of
    sequence outputs only, when an attention ``mask`` is given)."""
    if len(reference) != len(outputs):
        raise ExportVerificationError(
            f"the graph has {len(outputs)} outputs, the PyTorch model {len(reference)}"
        )
    for r, o in zip(reference, outputs, strict=True):
        if tuple(r.shape) != tuple(o.shape):
            raise ExportVerificationError(
                f"an output has shape {tuple(o.shape)} in ONNX Runtime, {tuple(r.shape)} in PyTorch"
            )
    ref = torch.cat([attended(r.detach().float(), mask) for r in reference])
    out = torch.cat([attended(o.float(), mask) for o in outputs])
    err = (ref - out).abs().max().item() if ref.numel() else 0.0
    return sqnr_db(ref, out), err


def reference_copy(model: nn.Module) -> nn.Module | None:
    """A copy of ``model`` with every lowbit module rebuilt on the reference kernel
    (dequantize + float op, activations simulated), or None when all already run it."""
    from lowbit.kernels import REFERENCE_NAME
    from lowbit.nn.base import KernelModule

    rebuilt: dict[int, Any] = {}
    for module in model.modules():
        if isinstance(module, KernelModule) and module.kernel_name != REFERENCE_NAME:
            tensors, meta = module.to_state()
            meta = {**meta, "kernel": REFERENCE_NAME}
            rebuilt[id(module)] = type(module).from_state(tensors, meta, registry=module.registry)
    return copy.deepcopy(model, rebuilt).eval() if rebuilt else None


def own_noise_db(
    model: nn.Module, reference: list[torch.Tensor], args: tuple, kwargs: dict[str, Any]
) -> float | None:
    """SQNR between lowbit's kernels and its reference kernels on the same inputs: how far
    two exact-by-construction implementations of this quantized model already differ (code
    flips at rounding boundaries, amplified by the model), or None without a fast kernel."""
    slow = reference_copy(model)
    if slow is None:
        return None
    with torch.inference_mode():
        other = tensor_leaves(slow(*args, **kwargs))
    return compare(reference, other, kwargs.get("attention_mask"))[0]


def verify_graph(path: Path, model: nn.Module, example_inputs: Any) -> Verification:
    """Check the file at ``path`` and compare ORT's outputs with ``model``'s.

    Raises:
        ExportVerificationError: SQNR below ``MIN_SQNR_DB`` (or outputs that differ in
            number or shape), naming the figures.
    """
    onnx = require_onnx()
    onnx.checker.check_model(str(path))  # by path: external data is checked too
    args, kwargs = split_inputs(example_inputs)
    with torch.inference_mode():
        reference = tensor_leaves(model(*args, **kwargs))
    mask = kwargs.get("attention_mask")
    sqnr, err = compare(reference, run_ort(path, example_inputs), mask)
    shapes = ", ".join(str(tuple(t.shape)) for t in tensor_leaves((args, kwargs)))
    detail = (
        f"ONNX Runtime vs lowbit PyTorch on the example inputs {shapes}"
        f"{' (attended positions)' if mask is not None else ''}: SQNR "
        f"{sqnr:.1f} dB, max abs error {err:.3g}"
    )
    if not sqnr >= MIN_SQNR_DB:
        noise = own_noise_db(model, reference, args, kwargs)
        if noise is None or not sqnr >= noise - NOISE_MARGIN_DB:
            within = "" if noise is None else f" (lowbit's reference kernels: {noise:.1f} dB)"
            raise ExportVerificationError(
                f"{detail}{within}, below the {MIN_SQNR_DB:.0f} dB floor: the graph does not "
                "hold lowbit's model; nothing was written (report this layer mix, or skip= "
                "the layers concerned; verify=False / --no-verify writes it unchecked)"
            )
        detail += (
            f"; below {MIN_SQNR_DB:.0f} dB but within lowbit's own kernel noise (its "
            f"reference kernels vs its fast ones: {noise:.1f} dB)"
        )
    return Verification(
        sqnr_db=sqnr if math.isfinite(sqnr) else float("inf"),
        max_abs_error=err,
        same_tokens=None,
        detail=detail,
    )
