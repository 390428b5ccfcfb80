"""ONNX export: lowbit's quantized models as graphs that ONNX Runtime, OpenVINO and TensorRT
run with their own integer kernels, holding exactly the values lowbit chose.

- ``graph.py``: any module tree (CNNs, MLPs, encoders) through torch's exporter, lowbit's
  quantized modules written as QDQ (static int8), dynamic int8, or MatMulNBits /
  GatherBlockQuantized (weight-only) nodes.
- ``decoder.py``: llama-family causal LMs as a decoder graph with past key/value inputs and
  outputs, and the greedy generation loop that runs it in ONNX Runtime.
- ``runtime.py``: the optional-dependency checks and the ONNX Runtime session both use.

onnx, onnxruntime and onnxscript are optional (``pip install "lowbit[onnx]"``).
"""

from lowbit.export.onnx.api import OnnxExportResult, Verification, export_onnx

__all__ = ["OnnxExportResult", "Verification", "export_onnx"]
