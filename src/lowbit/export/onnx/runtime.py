"""The optional packages ONNX export needs, and the ONNX Runtime session it verifies with."""

from __future__ import annotations

from collections.abc import Callable
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


def openvino_runner(
    path: str | Path, *, precision: str = "f32", threads: int | None = None
) -> Callable[..., Any]:
    """Compile the ONNX file ``path`` for OpenVINO's CPU plugin and return a function that
    runs it on numpy arrays or tensors (positional, in the graph's input order) and returns
    the first output as a numpy array. ``precision`` is OpenVINO's INFERENCE_PRECISION_HINT:
    "f32" runs the file's arithmetic as written; "bf16" is the CPU plugin's default on CPUs
    with bf16 units (faster, less exact)."""
    ov = require_openvino()
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": precision}
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = threads
    request = ov.Core().compile_model(str(path), "CPU", config).create_infer_request()

    def run(*inputs: Any) -> Any:
        arrays = [x.numpy() if hasattr(x, "numpy") else x for x in inputs]
        return request.infer(arrays)[0]

    return run
