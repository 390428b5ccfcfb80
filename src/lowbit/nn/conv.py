"""QuantConv2d: a Conv2d layer whose forward runs the kernel the registry chose."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.errors import InvalidInputError, InvalidSpecError
from lowbit.formats.affine import QParams
from lowbit.kernels import KernelRegistry, LayerSpec
from lowbit.nn.base import KernelModule
from lowbit.tensors import QTensor

IntPair = int | tuple[int, int]
Pad4 = tuple[int, int, int, int]
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


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


def _same_padding(module: nn.Conv2d) -> Pad4:
    """(left, right, top, bottom) of torch's padding='same' (stride 1): d·(k − 1) in total
    per axis, the odd one on the right/bottom, as nn.Conv2d does."""
    pads: list[int] = []
    for axis in (1, 0):
        total = module.dilation[axis] * (module.kernel_size[axis] - 1)
        pads += [total // 2, total - total // 2]
    return tuple(pads)  # type: ignore[return-value]


def _float_padding(module: nn.Conv2d) -> tuple[tuple[int, int], Pad4]:
    """(kernel padding, input padding) equivalent to ``module``'s: zero padding the kernels
    can do themselves goes to the kernel; other modes and asymmetric 'same' padding are
    applied to the input first (as nn.Conv2d itself does for non-zero modes)."""
    if module.padding == "valid":
        return (0, 0), (0, 0, 0, 0)
    if module.padding == "same":
        left, right, top, bottom = _same_padding(module)
    else:
        (top, left), (bottom, right) = module.padding, module.padding
    if module.padding_mode == "zeros" and (left, top) == (right, bottom):
        return (top, left), (0, 0, 0, 0)
    return (0, 0), (left, right, top, bottom)


def _pad(x: torch.Tensor, pads: Pad4, mode: str) -> torch.Tensor:
    """``x`` padded by ``pads`` in ``mode``; a torch quint8 input stays quint8 (modes torch
    cannot pad quantized are padded on the dequantized values, which copies codes exactly)."""
    torch_mode = "constant" if mode == "zeros" else mode
    if x.is_quantized and torch_mode in ("replicate", "circular"):
        padded = F.pad(x.dequantize(), pads, mode=torch_mode)
        return torch.quantize_per_tensor(padded, x.q_scale(), x.q_zero_point(), x.dtype)
    return F.pad(x, pads, mode=torch_mode)


class QuantConv2d(KernelModule):
    """2-D convolution with a quantized weight [out, in/groups, kh, kw].

    Args:
        weight: QTensor (int8 per-channel symmetric gets the int8 static kernel; every other
            kind, and the weight_only/dynamic modes, the reference kernel).
        bias: float tensor [out_channels] or None.
        stride, padding, dilation: ints or pairs (the kernel's zero padding); groups: int.
        input_padding: (left, right, top, bottom) applied to the input before the kernel,
            in ``padding_mode`` ("zeros", "reflect", "replicate" or "circular"):
            ``from_float`` uses it for non-zero padding modes and asymmetric 'same' padding.
        mode, input_qparams, output_qparams, relu, keep_quantized_output, kernel,
        registry: as in QuantLinear. A static layer accepts a float NCHW input (quantized
            with input_qparams) or a torch quint8 tensor (used as is).
    """

    op = "conv2d"
    state_attributes = ("input_padding", "padding_mode")

    def __init__(
        self,
        weight: QTensor,
        bias: torch.Tensor | None = None,
        *,
        stride: IntPair = 1,
        padding: IntPair = 0,
        dilation: IntPair = 1,
        groups: int = 1,
        input_padding: Pad4 = (0, 0, 0, 0),
        padding_mode: str = "zeros",
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
        if padding_mode not in PADDING_MODES or len(input_padding) != 4:
            raise InvalidSpecError(
                f"padding_mode={padding_mode!r}, input_padding={input_padding!r}: use one of "
                f"{PADDING_MODES} and four ints (left, right, top, bottom)"
            )
        self.input_padding = tuple(int(p) for p in input_padding)
        self.padding_mode = padding_mode
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.input_padding):
            x = _pad(x, self.input_padding, self.padding_mode)  # type: ignore[arg-type]
        return super().forward(x)

    def extra_repr(self) -> str:
        pad = f", input_padding={self.input_padding} ({self.padding_mode})"
        return super().extra_repr() + (pad if any(self.input_padding) else "")

    @property
    def out_channels(self) -> int:
        return self.weight.shape[0]

    @property
    def in_channels(self) -> int:
        return self.weight.shape[1] * self.spec.groups

    @classmethod
    def from_float(cls, module: nn.Conv2d, weight: QTensor, **kwargs: Any) -> QuantConv2d:
        """Replace ``module`` (an nn.Conv2d, any padding and padding_mode) given its
        quantized weight; keeps its bias and geometry."""
        if not isinstance(module, nn.Conv2d):
            raise InvalidInputError(f"from_float needs an nn.Conv2d, got {type(module).__name__}")
        if tuple(weight.shape) != tuple(module.weight.shape):
            raise InvalidInputError(
                f"quantized weight has shape {tuple(weight.shape)} but the Conv2d's is "
                f"{tuple(module.weight.shape)}; quantize this module's weight"
            )
        padding, input_padding = _float_padding(module)
        return cls(
            weight,
            module.bias,
            stride=module.stride,
            padding=padding,
            input_padding=input_padding,
            padding_mode=module.padding_mode,
            dilation=module.dilation,
            groups=module.groups,
            **kwargs,
        )
