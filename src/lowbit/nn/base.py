"""What QuantLinear, QuantConv2d and QuantAdd share: kernel selection, reporting, state.

A module holds its QTensor weight, float32 bias and LayerSpec; at construction it asks the
kernel registry for an entry (explicitly, with every reason kept for ``explain``) and lets
the entry repack the weight. ``forward`` only calls the entry. ``to_state`` writes the
canonical QTensor and JSON metadata; ``from_state`` rebuilds the packed params from them,
so nothing is ever pickled. ``from_state`` is written once, here: it calls the subclass's
constructor with the weight, the bias, the LayerSpec fields the constructor takes (by name)
and the constructor arguments a subclass lists in ``state_attributes`` (JSON values) and
``state_tensors`` (tensors, stored beside the weight when present).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from lowbit.errors import InvalidInputError, UnsupportedFormatError
from lowbit.kernels import (
    DEFAULT_REGISTRY,
    KernelRegistry,
    LayerSpec,
    describe_weight,
    explain_choice,
    qparams_from_dict,
    qparams_to_dict,
)
from lowbit.tensors import QTensor, qtensor_from_dict

STATE_VERSION = 1
_QPARAM_FIELDS = ("input_qparams", "other_qparams", "output_qparams")
_GEOMETRY = ("stride", "padding", "dilation")


def spec_to_dict(spec: LayerSpec) -> dict[str, Any]:
    """JSON-able LayerSpec (activation QParams as {"scale", "zero_point"})."""
    out: dict[str, Any] = {
        "op": spec.op,
        "mode": spec.mode,
        "relu": spec.relu,
        "keep_quantized_output": spec.keep_quantized_output,
        "groups": spec.groups,
        "per_token": spec.per_token,
        "token_zero_point": spec.token_zero_point,
    }
    out.update({name: list(getattr(spec, name)) for name in _GEOMETRY})
    out.update({name: qparams_to_dict(getattr(spec, name)) for name in _QPARAM_FIELDS})
    return out


def spec_from_dict(data: Mapping[str, Any]) -> LayerSpec:
    """Inverse of ``spec_to_dict``."""
    return LayerSpec(
        op=data["op"],
        mode=data["mode"],
        relu=bool(data["relu"]),
        keep_quantized_output=bool(data["keep_quantized_output"]),
        groups=int(data["groups"]),
        per_token=bool(data.get("per_token", False)),
        token_zero_point=bool(data.get("token_zero_point", False)),
        **{name: tuple(int(v) for v in data[name]) for name in _GEOMETRY},
        **{name: qparams_from_dict(data[name]) for name in _QPARAM_FIELDS},
    )


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _from_json(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


class KernelModule(nn.Module):
    """Base of the quantized modules: one registry entry runs ``forward``."""

    op: ClassVar[str]
    # Constructor arguments kept as attributes of the same name that the LayerSpec does not
    # hold (e.g. QuantEmbedding's padding_idx): to_state writes them, from_state passes them.
    state_attributes: ClassVar[tuple[str, ...]] = ()
    # Constructor arguments that are tensors (or None), kept as attributes of the same name:
    # to_state writes the present ones as flat tensors, from_state passes them back.
    state_tensors: ClassVar[tuple[str, ...]] = ()

    def _setup(
        self,
        weight: QTensor | None,
        bias: torch.Tensor | None,
        spec: LayerSpec,
        kernel: str | None,
        registry: KernelRegistry | None,
    ) -> None:
        if weight is not None and not isinstance(weight, QTensor):
            raise InvalidInputError(
                f"weight must be a lowbit QTensor, got {type(weight).__name__}; quantize it "
                "first (e.g. lowbit.algorithms.rtn_tensor)"
            )
        if bias is not None:
            bias = bias.detach().to(torch.float32).clone()
            if weight is not None and tuple(bias.shape) != (weight.shape[0],):
                raise InvalidInputError(
                    f"bias has shape {tuple(bias.shape)}, the weight needs ({weight.shape[0]},)"
                )
        self.weight = weight
        self.register_buffer("bias", bias)
        self.spec = spec
        self.kernel = kernel
        self.registry = DEFAULT_REGISTRY if registry is None else registry
        self.entry, self.considered = self.registry.select_spec(weight, spec, kernel=kernel)
        self._state = self.entry.prepare(weight, bias, spec)

    @property
    def kernel_name(self) -> str:
        """Name of the registry entry that runs this module."""
        return self.entry.name

    @property
    def mode(self) -> str:
        return self.spec.mode

    @property
    def keep_quantized_output(self) -> bool:
        """Static modules: return the torch quint8 output as is (for the next int8 layer)
        instead of dequantizing it."""
        return self.spec.keep_quantized_output

    @keep_quantized_output.setter
    def keep_quantized_output(self, keep: bool) -> None:
        if keep != self.spec.keep_quantized_output:
            spec = dataclasses.replace(self.spec, keep_quantized_output=bool(keep))
            self._setup(self.weight, self.bias, spec, self.kernel, self.registry)

    def kernel_report(self) -> dict[str, Any]:
        """What ``lowbit.kernels.explain`` shows for this module."""
        return {
            "op": self.spec.op,
            "weight": describe_weight(self.weight),
            "mode": self.spec.mode,
            "kernel": self.entry.name,
            "why": explain_choice(self.considered),
            "considered": list(self.considered),
        }

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.entry.run(self._state, *inputs)

    def extra_repr(self) -> str:
        weight = describe_weight(self.weight)
        return f"weight={weight}, mode={self.spec.mode}, kernel={self.entry.name!r}"

    def to_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Flat tensors (the QTensor's, under "weight.", "bias", and the subclass's
        ``state_tensors``) and JSON metadata."""
        tensors: dict[str, torch.Tensor] = {}
        meta: dict[str, Any] = {
            "class": type(self).__name__,
            "version": STATE_VERSION,
            "spec": spec_to_dict(self.spec),
            "kernel": self.kernel,
            "selected_kernel": self.entry.name,
            "weight": None,
        }
        if self.weight is not None:
            tensors, meta["weight"] = self.weight.to_dict("weight.")
        if self.bias is not None:
            tensors["bias"] = self.bias
        tensors.update(
            {n: getattr(self, n) for n in self.state_tensors if getattr(self, n) is not None}
        )
        meta.update({name: _jsonable(getattr(self, name)) for name in self.state_attributes})
        return tensors, meta

    @classmethod
    def from_state(
        cls,
        tensors: Mapping[str, torch.Tensor],
        metadata: Mapping[str, Any],
        *,
        registry: KernelRegistry | None = None,
    ) -> KernelModule:
        """Rebuild what ``to_state`` wrote (the packed kernel params are rebuilt, not read).

        Args:
            tensors: the flat tensors of ``to_state`` ("weight.*", "bias").
            metadata: its JSON metadata (after a JSON round trip: lists for tuples).
            registry: the kernel entries to choose from (default: DEFAULT_REGISTRY); the
                saved ``kernel`` (a forced entry name, or None) is passed on.
        Raises:
            UnsupportedFormatError: the state is another class's or another version's.
        """
        weight, bias, spec = cls._parts_from_state(tensors, metadata)
        params = inspect.signature(cls).parameters
        values = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)}
        values.update(weight=weight, bias=bias)
        # Absent in states written before the attribute was saved: the constructor default.
        values.update({n: _from_json(metadata[n]) for n in cls.state_attributes if n in metadata})
        values.update({n: tensors.get(n) for n in cls.state_tensors})
        kwargs = {name: value for name, value in values.items() if name in params}
        return cls(**kwargs, kernel=metadata.get("kernel"), registry=registry)

    @classmethod
    def _parts_from_state(
        cls, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, Any]
    ) -> tuple[QTensor | None, torch.Tensor | None, LayerSpec]:
        if metadata.get("class") != cls.__name__:
            raise UnsupportedFormatError(
                f"state of a {metadata.get('class')!r}, not a {cls.__name__}; load it with "
                "that class's from_state"
            )
        if metadata.get("version") != STATE_VERSION:
            raise UnsupportedFormatError(
                f"{cls.__name__} state version {metadata.get('version')!r} is not supported "
                f"(this lowbit reads {STATE_VERSION}); upgrade lowbit or export again"
            )
        wmeta = metadata["weight"]
        weight = None if wmeta is None else qtensor_from_dict(tensors, wmeta, "weight.")
        return weight, tensors.get("bias"), spec_from_dict(metadata["spec"])
