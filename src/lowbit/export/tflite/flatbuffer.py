"""A .tflite flatbuffer built with the schema module ai-edge-litert ships
(``ai_edge_litert.schema_py_generated``, the flatbuffers object API of tensorflow/lite's
schema.fbs): tensors, constant buffers, operators and their codes, one subgraph.

The builder knows the file format, not the model: ``convert.py`` decides which ops to write.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from lowbit.errors import require

FILE_IDENTIFIER = b"TFL3"
SCHEMA_VERSION = 3
# Opcodes above 127 live only in builtin_code; deprecated_builtin_code then holds this marker
# (schema.fbs: PLACEHOLDER_FOR_GREATER_OP_CODES).
_PLACEHOLDER_FOR_GREATER_OP_CODES = 127

# Operator versions for the tensor types lowbit writes, from tensorflow/lite/tools/versioning/
# op_version.cc (int8 per-channel conv is version 3, int8 fully connected 4, ...). The
# interpreter accepts any registered version; other runtimes check them.
_INT8_VERSIONS = {
    "CONV_2D": 3,
    "DEPTHWISE_CONV_2D": 3,
    "FULLY_CONNECTED": 4,
    "MAX_POOL_2D": 2,
    "AVERAGE_POOL_2D": 2,
    "ADD": 2,
    "RELU": 2,
    "PAD": 2,
    "PADV2": 2,
    "TRANSPOSE": 2,
    "RESHAPE": 1,
    "QUANTIZE": 2,
    "DEQUANTIZE": 2,
}

_NUMPY_TYPES = {"float32": "FLOAT32", "int8": "INT8", "int32": "INT32"}


def schema() -> Any:
    """``ai_edge_litert.schema_py_generated``, or one MissingDependencyError line naming
    ``pip install "lowbit[litert]"``."""
    require("flatbuffers", "litert")
    return require("ai_edge_litert.schema_py_generated", "litert")


class TfliteBuilder:
    """One subgraph under construction; ``finish`` returns the file's bytes.

    Tensors are added by name with their numpy dtype ("float32", "int8", "int32"); constant
    tensors carry their data in a buffer of their own; activation tensors may give a
    ``signature`` (shape with -1 for the batch) so the interpreter can resize them.
    """

    def __init__(self) -> None:
        self.fb = schema()
        self.tensors: list[Any] = []
        self.buffers: list[Any] = [self.fb.BufferT()]  # buffer 0: the empty sentinel
        self.operators: list[Any] = []
        self.opcodes: list[Any] = []
        self.opcode_index: dict[tuple[str, int], int] = {}
        self.op_counts: Counter[str] = Counter()

    def tensor(
        self,
        name: str,
        shape: Sequence[int],
        dtype: str,
        *,
        data: np.ndarray | None = None,
        scale: Sequence[float] | None = None,
        zero_point: Sequence[int] | None = None,
        axis: int = 0,
        signature: Sequence[int] | None = None,
    ) -> int:
        """Add a tensor; return its index. ``scale``/``zero_point`` (one per tensor, or one
        per slice along ``axis``) make it a quantized tensor."""
        t = self.fb.TensorT()
        t.name = name
        t.shape = np.asarray(shape, dtype=np.int32)
        t.type = getattr(self.fb.TensorType, _NUMPY_TYPES[dtype])
        if signature is not None and list(signature) != list(shape):
            t.shapeSignature = np.asarray(signature, dtype=np.int32)
        if data is not None:
            buffer = self.fb.BufferT()
            buffer.data = np.ascontiguousarray(data, dtype=dtype).reshape(-1).view(np.uint8)
            self.buffers.append(buffer)
            t.buffer = len(self.buffers) - 1
        else:
            t.buffer = 0
        if scale is not None:
            q = self.fb.QuantizationParametersT()
            q.scale = np.asarray(scale, dtype=np.float32)
            q.zeroPoint = np.asarray(zero_point, dtype=np.int64)
            q.quantizedDimension = axis
            t.quantization = q
        self.tensors.append(t)
        return len(self.tensors) - 1

    def const_int32(self, name: str, values: Sequence[int]) -> int:
        """A constant 1-D int32 tensor (shapes, permutations, paddings)."""
        data = np.asarray(values, dtype=np.int32)
        return self.tensor(name, data.shape, "int32", data=data)

    def op(
        self,
        name: str,
        inputs: Sequence[int],
        outputs: Sequence[int],
        options: tuple[str, Any] | None = None,
        *,
        int8: bool = True,
    ) -> None:
        """Add the builtin operator ``name`` ("CONV_2D", ...); ``options`` is its builtin
        options' union name and object, e.g. ("Conv2DOptions", Conv2DOptionsT(...));
        ``int8`` picks the operator version for int8 tensors (else version 1)."""
        version = _INT8_VERSIONS.get(name, 1) if int8 else 1
        key = (name, version)
        if key not in self.opcode_index:
            code = self.fb.OperatorCodeT()
            code.builtinCode = getattr(self.fb.BuiltinOperator, name)
            code.deprecatedBuiltinCode = min(code.builtinCode, _PLACEHOLDER_FOR_GREATER_OP_CODES)
            code.version = version
            self.opcode_index[key] = len(self.opcodes)
            self.opcodes.append(code)
        op = self.fb.OperatorT()
        op.opcodeIndex = self.opcode_index[key]
        op.inputs = np.asarray(inputs, dtype=np.int32)
        op.outputs = np.asarray(outputs, dtype=np.int32)
        if options is not None:
            union, value = options
            op.builtinOptionsType = getattr(self.fb.BuiltinOptions, union)
            op.builtinOptions = value
        self.operators.append(op)
        self.op_counts[name] += 1

    def options(self, cls_name: str, **fields: Any) -> Any:
        """A builtin options object (e.g. "Conv2DOptionsT") with ``fields`` set."""
        obj = getattr(self.fb, cls_name)()
        for field, value in fields.items():
            if not hasattr(obj, field):
                raise AttributeError(f"{cls_name} has no field {field!r}")
            setattr(obj, field, value)
        return obj

    def finish(self, inputs: Sequence[int], outputs: Sequence[int], description: str) -> bytes:
        """The file: one subgraph with ``inputs`` and ``outputs``, identifier TFL3."""
        import flatbuffers

        graph = self.fb.SubGraphT()
        graph.tensors = self.tensors
        graph.operators = self.operators
        graph.inputs = np.asarray(inputs, dtype=np.int32)
        graph.outputs = np.asarray(outputs, dtype=np.int32)
        graph.name = "main"
        model = self.fb.ModelT()
        model.version = SCHEMA_VERSION
        model.description = description
        model.operatorCodes = self.opcodes
        model.subgraphs = [graph]
        model.buffers = self.buffers
        builder = flatbuffers.Builder(1024)
        builder.Finish(model.Pack(builder), file_identifier=FILE_IDENTIFIER)
        return bytes(builder.Output())
