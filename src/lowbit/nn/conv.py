"""QuantConv2d: a Conv2d layer whose forward runs the kernel the registry chose."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from lowbit.errors import InvalidInputError, InvalidSpecError
from lowbit.formats.affine import QParams
from lowbit.kernels import KernelRegistry, LayerSpec
from lowbit.nn.base import KernelModule
from lowbit.tensors import QTensor

IntPair = int | tuple[int, int]


def _pair(v: IntPair, name: str) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    if isinstance(v, str):
        raise InvalidSpecError(
            f"{name}={v!r} is not supported; give explicit integers (e.g. padding=1)"
        )
    t = tuple(int(n) for n in v)
    if len(t) != 2:
        raise InvalidSpecError(f"{name} must be an int or a pair, got {v!r}")
    return t


class QuantConv2d(KernelModule):
    """2-D convolution with a quantized weight [out, in/groups, kh, kw].

    Args:
        weight: QTensor (int8 per-channel symmetric gets the int8 static kernel; every other
            kind, and the weight_only/dynamic modes, the reference kernel).
        bias: float tensor [out_channels] or None.
        stride, padding, dilation: ints or pairs (zero padding only); groups: int.
        mode, input_qparams, output_qparams, relu, keep_quantized_output, kernel,
        registry: as in QuantLinear. A static layer accepts a float NCHW input (quantized
            with input_qparams) or a torch quint8 tensor (used as is).
    """

    op = "conv2d"

    def __init__(
        self,
        weight: QTensor,
        bias: torch.Tensor | None = None,
        *,
        stride: IntPair = 1,
        padding: IntPair = 0,
        dilation: IntPair = 1,
        groups: int = 1,
        mode: str = "weight_only",
        input_qparams: QParams | None = None,
        output_qparams: QParams | None = None,
        relu: bool = False,
        keep_quantized_output: bool = False,
        kernel: str | None = None,
        registry: KernelRegistry | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(weight, QTensor) or len(weight.shape) != 4:
            raise InvalidInputError(
                "QuantConv2d needs a 4-D QTensor weight [out, in/groups, kh, kw], got "
                f"{getattr(weight, 'shape', type(weight).__name__)}"
            )
        if groups < 1 or weight.shape[0] % groups:
            raise InvalidSpecError(
                f"groups={groups} must be >= 1 and divide out_channels={weight.shape[0]}"
            )
        spec = LayerSpec(
            op="conv2d",
            mode=mode,
            relu=relu,
            stride=_pair(stride, "stride"),
            padding=_pair(padding, "padding"),
            dilation=_pair(dilation, "dilation"),
            groups=int(groups),
            input_qparams=input_qparams,
            output_qparams=output_qparams,
            keep_quantized_output=keep_quantized_output,
        )
        self._setup(weight, bias, spec, kernel, registry)

    @property
    def out_channels(self) -> int:
        return self.weight.shape[0]

    @property
    def in_channels(self) -> int:
        return self.weight.shape[1] * self.spec.groups

    @classmethod
    def from_float(cls, module: nn.Conv2d, weight: QTensor, **kwargs: Any) -> QuantConv2d:
        """Replace ``module`` (an nn.Conv2d with zero padding) given its quantized weight;
        keeps its bias and geometry."""
        if not isinstance(module, nn.Conv2d):
            raise InvalidInputError(f"from_float needs an nn.Conv2d, got {type(module).__name__}")
        if module.padding_mode != "zeros":
            raise InvalidSpecError(
                f"padding_mode={module.padding_mode!r} is not supported; only 'zeros' is"
            )
        if tuple(weight.shape) != tuple(module.weight.shape):
            raise InvalidInputError(
                f"quantized weight has shape {tuple(weight.shape)} but the Conv2d's is "
                f"{tuple(module.weight.shape)}; quantize this module's weight"
            )
        padding = (0, 0) if module.padding == "valid" else module.padding
        return cls(
            weight,
            module.bias,
            stride=module.stride,
            padding=padding,
            dilation=module.dilation,
            groups=module.groups,
            **kwargs,
        )

    @classmethod
    def from_state(
        cls,
        tensors: Mapping[str, torch.Tensor],
        metadata: Mapping[str, Any],
        *,
        registry: KernelRegistry | None = None,
    ) -> QuantConv2d:
        """Rebuild what ``to_state`` wrote (the packed kernel params are rebuilt, not read)."""
        weight, bias, spec = cls._parts_from_state(tensors, metadata)
        return cls(
            weight,
            bias,
            stride=spec.stride,
            padding=spec.padding,
            dilation=spec.dilation,
            groups=spec.groups,
            mode=spec.mode,
            input_qparams=spec.input_qparams,
            output_qparams=spec.output_qparams,
            relu=spec.relu,
            keep_quantized_output=spec.keep_quantized_output,
            kernel=metadata.get("kernel"),
            registry=registry,
        )
