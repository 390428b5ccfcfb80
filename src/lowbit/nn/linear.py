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

    A dynamic layer may transform its input before quantizing it (``input_scale``,
    ``outlier_channels``; see ``lowbit.algorithms.transforms.outliers``): the kernel
    then computes q(x·input_scale) W^T, and the outlier channels, whose input_scale is 0,
    are added back in float: y += x[..., outlier_channels] outlier_weight^T.

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
        input_scale: dynamic: float [in_features] multiplied into the input before it is
            quantized (SmoothQuant's 1/s where no layer before can absorb it; 0 at the
            outlier channels). W holds the matching W·s.
        outlier_channels: dynamic: int64 indices of input channels computed in float with
            ``outlier_weight`` (float [out_features, len(outlier_channels)]).
        kernel: force a registry entry by name (default: the best that applies).
        registry: the kernel entries to choose from (default: lowbit.kernels.DEFAULT_REGISTRY).
    """

    op = "linear"
    state_tensors = ("input_scale", "outlier_channels", "outlier_weight")

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
        input_scale: torch.Tensor | None = None,
        outlier_channels: torch.Tensor | None = None,
        outlier_weight: torch.Tensor | None = None,
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
        transform = _check_input_transform(
            weight.shape, mode, input_scale, outlier_channels, outlier_weight
        )
        for name, value in zip(self.state_tensors, transform, strict=True):
            self.register_buffer(name, value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise InvalidInputError(
                f"this QuantLinear takes inputs whose last dimension is in_features="
                f"{self.in_features}, got shape {tuple(x.shape)}; check the layer before it"
            )
        if self.input_scale is None:
            return super().forward(x)
        y = super().forward(x * self.input_scale.to(x.dtype))
        if self.outlier_channels is None:
            return y
        outliers = x.index_select(-1, self.outlier_channels).to(torch.float32)
        return y + (outliers @ self.outlier_weight.t()).to(y.dtype)

    def extra_repr(self) -> str:
        if self.input_scale is None:
            return super().extra_repr()
        outliers = 0 if self.outlier_channels is None else self.outlier_channels.numel()
        return f"{super().extra_repr()}, input scaled, {outliers} float outlier channels"

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


def _check_input_transform(
    shape: torch.Size,
    mode: str,
    input_scale: torch.Tensor | None,
    outlier_channels: torch.Tensor | None,
    outlier_weight: torch.Tensor | None,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """The input transform's tensors as stored (float32 / int64), or a clear error."""
    out_features, in_features = shape
    if input_scale is None:
        if outlier_channels is not None or outlier_weight is not None:
            raise InvalidInputError(
                "outlier_channels need an input_scale that is 0 at those channels (and 1, or "
                "the smoothing scale, elsewhere)"
            )
        return None, None, None
    if mode != "dynamic":
        raise InvalidInputError(
            f"input_scale is for mode='dynamic' layers, this one is {mode!r}; fold the scale "
            "into the weights and the layer before instead"
        )
    scale = input_scale.detach().to(torch.float32).clone()
    if tuple(scale.shape) != (in_features,):
        raise InvalidInputError(
            f"input_scale has shape {tuple(scale.shape)}, the layer needs ({in_features},)"
        )
    if (outlier_channels is None) != (outlier_weight is None):
        raise InvalidInputError("give outlier_channels and outlier_weight together")
    if outlier_channels is None:
        return scale, None, None
    index = outlier_channels.detach().to(torch.int64).clone()
    weight = outlier_weight.detach().to(torch.float32).clone()
    if index.dim() != 1 or tuple(weight.shape) != (out_features, index.numel()):
        raise InvalidInputError(
            f"outlier_weight must be [out_features={out_features}, "
            f"len(outlier_channels)={index.numel()}], got {tuple(weight.shape)}"
        )
    if (
        bool(((index < 0) | (index >= in_features)).any())
        or index.unique().numel() != index.numel()
        or bool(scale[index].any())
    ):
        raise InvalidInputError(
            f"outlier_channels must be distinct channels in [0, {in_features}) whose "
            "input_scale is 0 (they are computed in float, not quantized)"
        )
    return scale, index, weight
