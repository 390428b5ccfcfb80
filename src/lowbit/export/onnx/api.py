"""``export_onnx``: one entry for every lowbit model; it picks the graph builder."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from lowbit.errors import InvalidInputError

TARGETS = ("ort", "openvino", "tensorrt")


@dataclass(frozen=True)
class Verification:
    """How the exported graph, run in ONNX Runtime, agreed with lowbit's PyTorch model.

    Attributes:
        sqnr_db: SQNR of ORT's outputs against PyTorch's (None for a decoder, see tokens).
        max_abs_error: largest absolute difference of the outputs.
        same_tokens: decoder graphs: greedy tokens equal for every prompt and step (else None).
        detail: one line for the user (what was run, on which inputs).
    """

    sqnr_db: float | None
    max_abs_error: float | None
    same_tokens: bool | None
    detail: str


@dataclass(frozen=True)
class OnnxExportResult:
    """What ``export_onnx`` wrote.

    Attributes:
        path: the .onnx file (its external data file, if any, beside it).
        kind: "graph" (module tree) or "decoder" (causal LM with past key/values).
        output_bytes: bytes on disk, external data included.
        op_counts: ONNX op type -> count (what the runtimes will see: QuantizeLinear,
            MatMulNBits, ...).
        verification: the ORT check, or None with ``verify=False``.
        float_layers: names of layers left in float, with the reason, as lowbit planned them.
    """

    path: Path
    kind: str
    output_bytes: int
    op_counts: dict[str, int]
    verification: Verification | None
    float_layers: dict[str, str] = field(default_factory=dict)


def is_causal_lm(model: nn.Module) -> bool:
    """A transformers causal LM (``*ForCausalLM``): exported as a decoder graph."""
    config = getattr(model, "config", None)
    architectures = getattr(config, "architectures", None) or [type(model).__name__]
    return any(str(a).endswith("ForCausalLM") for a in architectures) and hasattr(model, "generate")


def export_onnx(
    model: nn.Module,
    example_inputs: Any,
    path: str | os.PathLike,
    *,
    target: str = "ort",
    opset: int | None = None,
    verify: bool = True,
    skip: tuple[str, ...] = (),
) -> OnnxExportResult:
    """Write ``model`` (lowbit-quantized or float) as an ONNX file at ``path``, atomically.

    Args:
        model: a module tree with lowbit's quantized modules, or a transformers causal LM
            (llama family), quantized weight-only or float.
        example_inputs: a tensor, tuple of tensors or dict of keyword tensors the model takes
            (used to trace the graph and to verify it; a padded batch for text models); for a
            causal LM, token ids of shape [batch, seq] or None for a built-in prompt.
        path: the .onnx file to write (replaced atomically; large models put their weights in
            one external data file beside it).
        target: "ort" (ONNX Runtime conventions; also what OpenVINO loads, except per-token
            int8 activations), "openvino" (as "ort", with per-token activation quantization
            written as elementwise ops: slower in ORT, loadable in OpenVINO 2026.4) or
            "tensorrt" (symmetric int8, zero point 0).
        opset: None for the builder's default; 21 writes standard DequantizeLinear with
            block_size instead of com.microsoft's MatMulNBits, for runtimes other than ORT.
        verify: run onnx.checker, then ONNX Runtime on ``example_inputs``, and compare with
            the PyTorch model (SQNR; greedy tokens for a decoder).
        skip: names (or fnmatch patterns) of layers to leave in float when the exporter
            cannot express them (module graphs; the causal-LM decoder refuses it).
    """
    if target not in TARGETS:
        raise InvalidInputError(f"target {target!r} is not one of {', '.join(TARGETS)}")
    if is_causal_lm(model):
        from lowbit.export.onnx.decoder import export_decoder

        if skip:
            raise InvalidInputError(
                "skip= is not taken by the causal-LM decoder export; quantize the model with a "
                "recipe that leaves those layers float (Recipe skip) instead"
            )
        return export_decoder(
            model, example_inputs, Path(path), target=target, opset=opset, verify=verify
        )
    from lowbit.export.onnx.graph import export_graph

    return export_graph(
        model, example_inputs, Path(path), target=target, opset=opset, verify=verify, skip=skip
    )
