"""``export_graph``: a module tree (CNN, MLP, encoder) with lowbit's quantized modules as one
ONNX graph, through torch's ``torch.export``-based exporter.

The model is copied with every lowbit module replaced by its export twin (twins.py), whose
custom ops become QDQ / MatMulInteger / MatMulNBits nodes (ops.py); the rest of the model
(pooling, attention, norms, layers lowbit left in float) is exported by torch as it is, so
the graph keeps the model's own structure and every shape the model accepts: all input
dimensions are exported dynamic where the model allows it (``Dim.AUTO``), so padded text
batches of any size and length run. (The legacy TorchScript exporter traced MiniLM's
no-padding attention path; issue 14.)

The file is written in a scratch folder, checked there (verify.py) and only then moved
into place, so a graph that fails its check is never left at ``path``.
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lowbit.errors import InvalidInputError
from lowbit.export.onnx.api import OnnxExportResult, Verification
from lowbit.export.onnx.runtime import require_onnx
from lowbit.export.onnx.staging import EXTERNAL_DATA_BYTES, staged, staged_bytes
from lowbit.export.onnx.verify import split_inputs, verify_graph

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 18
OPSETS = range(18, 24)


def _dynamic_shapes(args: tuple, kwargs: dict[str, Any]) -> Any:
    """Every dimension of every tensor input ``Dim.AUTO``: dynamic unless the model fixes
    it (a CNN's Flatten fixes H and W; batch and sequence stay free)."""
    auto = torch.export.Dim.AUTO

    def spec(t: Any) -> Any:
        return {d: auto for d in range(t.dim())} if isinstance(t, torch.Tensor) else None

    if kwargs:
        return {k: spec(v) for k, v in kwargs.items()}
    return tuple(spec(a) for a in args)


def _traceable(args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
    """Inputs with a batch of 1 repeated to 2 for tracing: torch.export specializes size-1
    dimensions to 1, which would fix the graph's batch size."""

    def widen(t: Any) -> Any:
        if isinstance(t, torch.Tensor) and t.dim() and t.shape[0] == 1:
            return torch.cat([t, t])
        return t

    return tuple(widen(a) for a in args), {k: widen(v) for k, v in kwargs.items()}


def _export_program(twin: nn.Module, args: tuple, kwargs: dict[str, Any], opset: int) -> Any:
    from lowbit.export.onnx.ops import translation_table

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation chatter
        return torch.onnx.export(
            twin,
            args,
            kwargs=kwargs or None,
            dynamo=True,
            dynamic_shapes=_dynamic_shapes(args, kwargs),
            custom_translation_table=translation_table(),
            opset_version=opset,
            optimize=True,
            verbose=False,
        )


def _nbytes(module: nn.Module) -> int:
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def op_counts(path: Path) -> dict[str, int]:
    """ONNX op type -> count in the main graph of the file at ``path`` (weights not read)."""
    onnx = require_onnx()
    model = onnx.load(str(path), load_external_data=False)
    return dict(sorted(Counter(n.op_type for n in model.graph.node).items()))


def export_graph(
    model: nn.Module,
    example_inputs: Any,
    path: Path,
    *,
    target: str = "ort",
    opset: int | None = None,
    verify: bool = True,
    skip: Sequence[str] = (),
) -> OnnxExportResult:
    """Write ``model`` as one ONNX graph at ``path`` (see ``lowbit.export_onnx``).

    Raises:
        InvalidInputError: an opset outside 18..23, or example inputs that are not tensors.
        UnsupportedFormatError: layers the exporter cannot express (named, with ``skip``).
        ExportVerificationError: ORT's outputs below 30 dB SQNR against lowbit's (nothing
            is written then).
    """
    require_onnx()
    opset = DEFAULT_OPSET if opset is None else int(opset)
    if opset not in OPSETS:
        raise InvalidInputError(
            f"opset {opset} is not supported; use {OPSETS.start}..{OPSETS.stop - 1} (21 and "
            "up write standard blocked DequantizeLinear instead of MatMulNBits)"
        )
    args, kwargs = split_inputs(example_inputs)
    if not any(isinstance(t, torch.Tensor) for t in (*args, *kwargs.values())):
        raise InvalidInputError(
            "example_inputs must be a tensor, a tuple of tensors or a dict of keyword "
            "tensors the model takes (a padded batch for text models)"
        )
    import lowbit.export.onnx.ops  # noqa: F401  (registers torch.ops.lowbit_onnx)
    from lowbit.export.onnx.twins import export_copy, four_bit_buffers, narrow_initializers

    twin, floats = export_copy(model, target=target, opset=opset, skip=tuple(skip))
    program = _export_program(twin, *_traceable(args, kwargs), opset)
    narrow_initializers(program.model, four_bit_buffers(twin))
    path = Path(path)
    external = _nbytes(twin) > EXTERNAL_DATA_BYTES
    verification: Verification | None = None
    with staged(path) as target:
        program.save(str(target), external_data=external)
        if verify:
            verification = verify_graph(target, model, example_inputs)
        output_bytes = staged_bytes(target)
        counts = op_counts(target)
    logger.info("wrote %s (%d bytes)", path, output_bytes)
    return OnnxExportResult(
        path=path,
        kind="graph",
        output_bytes=output_bytes,
        op_counts=counts,
        verification=verification,
        float_layers=floats,
    )
