"""The optional packages ONNX export needs, and the ONNX Runtime session it verifies with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lowbit.errors import require


def require_onnx() -> Any:
    """``onnx``, or one MissingDependencyError line naming ``pip install "lowbit[onnx]"``."""
    require("onnxscript", "onnx")
    return require("onnx", "onnx")


def require_onnxruntime() -> Any:
    """``onnxruntime``, or one MissingDependencyError line naming the ``onnx`` extra."""
    return require("onnxruntime", "onnx")


def require_openvino() -> Any:
    """``openvino``, or one MissingDependencyError line naming the ``openvino`` extra."""
    return require("openvino", "openvino")


def ort_session(path: str | Path, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session of ``path`` with every graph optimization on (the
    QDQ and MatMulNBits fusions happen here), ``threads`` intra-op threads (default: ORT's)."""
    ort = require_onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
