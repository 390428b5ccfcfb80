"""QuantLinear: a Linear layer whose forward runs the kernel the registry chose."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lowbit.errors import InvalidInputError
from lowbit.formats.affine import QParams
from lowbit.kernels import KernelRegistry, LayerSpec
from lowbit.nn.base import KernelModule
from lowbit.tensors import QTensor


class QuantLinear(KernelModule):
    """y = x W^T + b with a quantized W (and, in dynamic/static mode, int8 activations).

    Args:
        weight: QTensor of shape [out_features, in_features] (any kind; int8 per-channel
            symmetric gets int8 kernels, int4/int8 per-group or per-channel gets the aten
            weight-only kernels, the rest the reference kernel).
        bias: float tensor [out_features] or None (kept in float32).
        mode: "weight_only", "dynamic" or "static".
        input_qparams, output_qparams: static: per-tensor uint8 zero-point QParams.
        relu: apply ReLU to the output (fused in the int8 kernels).
        keep_quantized_output: static: return a torch quint8 tensor for the next int8 layer.
        per_token: dynamic: one int8 scale per token instead of one per batch.
        token_zero_point: per_token: an int8 zero point per token too (asymmetric).
        kernel: force a registry entry by name (default: the best that applies).
        registry: the kernel entries to choose from (default: lowbit.kernels.DEFAULT_REGISTRY).
    """

    op = "linear"

    def __init__(
        self,
        weight: QTensor,
        bias: torch.Tensor | None = None,
        *,
        mode: str = "weight_only",
        input_qparams: QParams | None = None,
        output_qparams: QParams | None = None,
        relu: bool = False,
        keep_quantized_output: bool = False,
        per_token: bool = False,
        token_zero_point: bool = False,
        kernel: str | None = None,
        registry: KernelRegistry | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(weight, QTensor) or len(weight.shape) != 2:
            raise InvalidInputError(
                "QuantLinear needs a 2-D QTensor weight [out_features, in_features], got "
                f"{getattr(weight, 'shape', type(weight).__name__)}"
            )
        spec = LayerSpec(
            op="linear",
            mode=mode,
            relu=relu,
            input_qparams=input_qparams,
            output_qparams=output_qparams,
            per_token=per_token,
            token_zero_point=token_zero_point,
            keep_quantized_output=keep_quantized_output,
        )
        self._setup(weight, bias, spec, kernel, registry)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise InvalidInputError(
                f"this QuantLinear takes inputs whose last dimension is in_features="
                f"{self.in_features}, got shape {tuple(x.shape)}; check the layer before it"
            )
        return super().forward(x)

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    @classmethod
    def from_float(cls, module: nn.Linear, weight: QTensor, **kwargs: Any) -> QuantLinear:
        """Replace ``module`` (an nn.Linear) given its quantized weight; keeps its bias."""
        if not isinstance(module, nn.Linear):
            raise InvalidInputError(f"from_float needs an nn.Linear, got {type(module).__name__}")
        if tuple(weight.shape) != tuple(module.weight.shape):
            raise InvalidInputError(
                f"quantized weight has shape {tuple(weight.shape)} but the Linear's is "
                f"{tuple(module.weight.shape)}; quantize this module's weight"
            )
        return cls(weight, module.bias, **kwargs)
