"""A small ONNX graph builder for the decoder exporter: nodes, initializers and unique names,
on top of onnx.helper (the decoder graph is written node by node, not traced)."""

from __future__ import annotations

from typing import Any

import numpy as np

from lowbit.export.onnx.runtime import require_onnx

MS_DOMAIN = "com.microsoft"


class GraphBuilder:
    """Collects nodes and initializers; ``op`` adds a node and returns its output name(s)."""

    def __init__(self) -> None:
        self.onnx = require_onnx()
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._used: set[str] = set()
        self.uses_ms_domain = False

    def name(self, hint: str) -> str:
        """A graph-unique value name starting with ``hint``."""
        candidate, k = hint, 0
        while candidate in self._used:
            k += 1
            candidate = f"{hint}_{k}"
        self._used.add(candidate)
        return candidate

    def const(self, hint: str, array: np.ndarray | Any) -> str:
        """An initializer holding ``array`` (a numpy array or a ready TensorProto)."""
        name = self.name(hint)
        if isinstance(array, (np.ndarray, np.generic)):
            # np.asarray keeps 0-d scalars 0-d (ascontiguousarray would make them 1-D)
            tensor = self.onnx.numpy_helper.from_array(np.asarray(array, order="C"), name)
        else:
            tensor = array
            tensor.name = name
        self.initializers.append(tensor)
        return name

    def ints(self, hint: str, values: list[int]) -> str:
        """An int64 1-D initializer (shapes, axes)."""
        return self.const(hint, np.asarray(values, dtype=np.int64))

    def op(
        self,
        op_type: str,
        inputs: list[str],
        hint: str | None = None,
        *,
        outputs: int = 1,
        domain: str | None = None,
        **attrs: Any,
    ) -> Any:
        """Add ``op_type`` on ``inputs`` (names; "" for an omitted optional input); returns
        the output name, or a list of names when ``outputs`` > 1."""
        base = hint or op_type.lower()
        names = [self.name(base if i == 0 else f"{base}_{i}") for i in range(outputs)]
        if domain == MS_DOMAIN:
            self.uses_ms_domain = True
        self.nodes.append(
            self.onnx.helper.make_node(
                op_type, inputs, names, name=self.name(f"{base}/{op_type}"), domain=domain, **attrs
            )
        )
        return names[0] if outputs == 1 else names

    def model(self, inputs: list[Any], outputs: list[Any], *, opset: int, name: str) -> Any:
        """The ModelProto: default domain at ``opset``, com.microsoft 1 when used."""
        helper = self.onnx.helper
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.initializers)
        imports = [helper.make_opsetid("", opset)]
        if self.uses_ms_domain:
            imports.append(helper.make_opsetid(MS_DOMAIN, 1))
        model = helper.make_model(graph, opset_imports=imports, producer_name="lowbit")
        model.ir_version = 10  # IR 10 carries int4/uint4 (opset 21); ORT 1.32 reads it
        return model
