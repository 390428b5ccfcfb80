"""Quantization-aware training modules: float Linear/Conv2d with fake-quantized tensors.

``QATLinear`` and ``QATConv2d`` wrap an (already BatchNorm-folded) ``nn.Linear`` /
``nn.Conv2d`` and simulate, in float, what the static int8 modules compute:

* weight: symmetric, restricted range (codes ±(2^(b-1) - 1)), per output channel by default,
  int8 by default; QParams from the current weight's range at every step (or a learnable
  LSQ step size with ``learnable=True``);
* input activation: unsigned, asymmetric with an integer zero point (torch quint8 style), per
  tensor; the range is an exponential moving average of each training batch's min/max (the
  arithmetic of ``lowbit.observers.MovingAverageMinMaxObserver``), frozen in eval mode; or a
  learnable scale and zero point (LSQ+) with ``learnable=True``;
* optionally the output (after the fused ReLU, when ``relu=True``), quantized like the input.

The fake-quantized values equal ``lowbit.formats.affine.fake_quantize`` with the QParams
``qat_state()`` reports, bit for bit, so a convert step can build int8 modules from
``qat_state()`` that compute what the QAT model computed. Gradients pass by the
straight-through estimator (``lowbit.formats.qat``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.errors import InvalidInputError, InvalidSpecError
from lowbit.formats.affine import QParams, choose_qparams
from lowbit.formats.checks import check_finite
from lowbit.formats.granularity import Granularity, PerAxis, PerTensor
from lowbit.formats.qat import fake_quantize_ste, lsq_fake_quantize
from lowbit.formats.qtypes import IntType

__all__ = ["ActivationFakeQuant", "QATConv2d", "QATLinear", "QATOptions", "QATState"]

# Smallest learnable step size: keeps x / s finite (torch.ao's LearnableFakeQuantize uses the
# same floor).
_EPS = float(torch.finfo(torch.float32).eps)


@torch.no_grad()
def _floor_(scale: nn.Parameter) -> None:
    """Raise a learned step size that an optimizer step pushed below _EPS back to it, in
    place, as torch.ao's LearnableFakeQuantize does: a clamp in the graph would zero the
    scale's gradient there and leave it stuck."""
    scale.clamp_(min=_EPS)


def _check_bits(name: str, bits: Any, low: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not low <= bits <= 8:
        raise InvalidSpecError(
            f"{name} must be an integer in {low}..8, got {bits!r}; use 8 for int8 inference "
            "(lower widths are simulated in float only)"
        )
    return bits


@dataclass(frozen=True)
class QATOptions:
    """How a QAT module fake-quantizes (the same for ``QATLinear`` and ``QATConv2d``).

    Attributes:
        weight_bits: signed weight width, 2..8 (restricted symmetric codes ±(2^(b-1) - 1)).
        act_bits: unsigned activation width, 1..8.
        per_channel: one weight scale per output channel (True) or one per tensor.
        learnable: LSQ step sizes for weight and activations (and LSQ+ zero points) instead
            of min/max ranges. The parameters are ``weight_scale``, ``input_quant.scale`` and
            ``input_quant.zero_point`` (and ``output_quant.*``). LSQ was designed for SGD; with
            Adam give the parameters whose names end in "scale" or "zero_point" a much smaller
            learning rate (e.g. 1e-4) than the weights, or its fixed-size first steps drive
            the step sizes (~1e-2) to zero.
        relu: apply ReLU after the op (a fused Linear+ReLU / Conv+ReLU).
        quantize_output: also fake-quantize the output (after the ReLU).
        averaging_constant: moving-average constant of the activation ranges, in (0, 1].

    Values are checked when a module is built (InvalidSpecError).
    """

    weight_bits: int = 8
    act_bits: int = 8
    per_channel: bool = True
    learnable: bool = False
    relu: bool = False
    quantize_output: bool = False
    averaging_constant: float = 0.01


@dataclass(frozen=True)
class QATState:
    """What a convert step needs to build the int8 module a QAT module simulates.

    Attributes:
        op: "linear" or "conv2d".
        weight: the float weight (detached copy), shape (out, in) or (out, in/groups, kh, kw).
        bias: the float bias (detached copy) or None.
        weight_qparams: signed, symmetric restricted QParams (per output channel: PerAxis(0)).
        input_qparams: unsigned, zero-point form, per tensor.
        output_qparams: like input_qparams for the output, or None when it is not quantized.
        relu: whether a ReLU follows the op (fused Linear+ReLU / Conv+ReLU).
        conv: ``stride``, ``padding``, ``padding_mode``, ``dilation``, ``groups`` of a conv2d;
            empty for linear.
    """

    op: Literal["linear", "conv2d"]
    weight: torch.Tensor
    bias: torch.Tensor | None
    weight_qparams: QParams
    input_qparams: QParams
    output_qparams: QParams | None
    relu: bool
    conv: dict[str, Any] = field(default_factory=dict)


class ActivationFakeQuant(nn.Module):
    """Per-tensor asymmetric (integer zero point) fake quantization of an activation.

    Training mode: without ``learnable``, each batch updates an exponential moving average of
    its min and max (the first batch sets them; then ``min += c·(batch_min - min)``, as
    ``MovingAverageMinMaxObserver``) and the batch is fake-quantized with the QParams of that
    range (``choose_qparams(..., clip=(min, max))``, so the arithmetic is the one PTQ uses),
    gradients straight through. With ``learnable=True`` the scale and zero point are
    parameters trained by LSQ+, initialised from the first training batch's min/max.
    Eval mode: the range or parameters are frozen.

    Args:
        bits: code width of the unsigned type (8: uint8, codes 0..255).
        learnable: learn scale and zero point (LSQ+) instead of tracking min/max.
        averaging_constant: c in (0, 1] of the moving average.
    """

    def __init__(
        self, bits: int = 8, *, learnable: bool = False, averaging_constant: float = 0.01
    ) -> None:
        super().__init__()
        self.qtype = IntType(_check_bits("act_bits", bits, 1), False)
        if not 0.0 < averaging_constant <= 1.0:
            raise InvalidSpecError(
                f"averaging_constant must be in (0, 1], got {averaging_constant}; "
                "0.01 is the usual value"
            )
        self.learnable = bool(learnable)
        self.averaging_constant = float(averaging_constant)
        self.register_buffer("num_batches", torch.zeros((), dtype=torch.int64))
        if self.learnable:
            self.scale = nn.Parameter(torch.ones(()))
            self.zero_point = nn.Parameter(torch.zeros(()))
        else:
            self.register_buffer("min_val", torch.zeros(()))
            self.register_buffer("max_val", torch.zeros(()))

    @property
    def ready(self) -> bool:
        """Whether a training batch has set the range (or the initial learnable parameters)."""
        return int(self.num_batches) > 0

    def _require_ready(self) -> None:
        if not self.ready:
            raise InvalidInputError(
                "activation fake quantization has seen no training batch, so it has no range; "
                "run at least one forward pass in train mode (model.train()) before eval or "
                "qat_state()"
            )

    @torch.no_grad()
    def _observe(self, x: torch.Tensor) -> None:
        x = x.detach()
        check_finite(x, what="activation seen by QAT fake quantization")
        if x.numel() == 0:
            return
        x = x.to(torch.float32)
        lo, hi = x.amin(), x.amax()
        if self.learnable:
            if not self.ready:
                qp = self._from_range(lo, hi)
                self.scale.copy_(qp.scale)
                assert qp.zero_point is not None
                self.zero_point.copy_(qp.zero_point.to(torch.float32))
        elif not self.ready:
            self.min_val.copy_(lo)
            self.max_val.copy_(hi)
        else:
            c = self.averaging_constant
            self.min_val.add_(c * (lo - self.min_val))
            self.max_val.add_(c * (hi - self.max_val))
        self.num_batches.add_(1)

    def _from_range(self, lo: torch.Tensor, hi: torch.Tensor) -> QParams:
        # A stand-in tensor: only its shape matters once the clip range is given.
        return choose_qparams(
            torch.zeros((), device=lo.device),
            self.qtype,
            PerTensor(),
            symmetric=False,
            form="zero_point",
            clip=(lo, hi),
        )

    def _scale(self) -> torch.Tensor:
        return self.scale.clamp_min(_EPS)

    def qparams(self) -> QParams:
        """The current QParams (uint, zero-point form, per tensor; scale float32 shape ())."""
        self._require_ready()
        if not self.learnable:
            return self._from_range(self.min_val, self.max_val)
        qmin, qmax = self.qtype.qmin, self.qtype.qmax
        zp = torch.round(self.zero_point.detach()).clamp(qmin, qmax).to(torch.int32)
        scale = self._scale().detach().to(torch.float32).clone()
        return QParams(scale, self.qtype, PerTensor(), qmin, qmax, zero_point=zp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Fake-quantize ``x`` (observing it first in training mode)."""
        if not torch.is_tensor(x) or not x.is_floating_point():
            raise InvalidInputError(
                f"QAT modules take float tensors, got {getattr(x, 'dtype', type(x).__name__)}; "
                "dequantize quantized inputs before a QAT module"
            )
        if self.training:
            self._observe(x)
            if self.learnable:
                _floor_(self.scale)
        self._require_ready()
        qmin, qmax = self.qtype.qmin, self.qtype.qmax
        if self.learnable:
            return lsq_fake_quantize(x, self._scale(), self.zero_point, qmin, qmax)
        qp = self.qparams()
        return fake_quantize_ste(x, qp.scale, qp.zero_point, qmin, qmax)

    def extra_repr(self) -> str:
        mode = "learnable" if self.learnable else f"ema={self.averaging_constant}"
        return f"{self.qtype.name}, {mode}"


class _QATModule(nn.Module):
    """Shared parts: weight fake quantization, input/output quantizers, ``qat_state``.

    Subclasses name the float module they wrap (``wraps``) and the class to use for the
    other one (``instead``).
    """

    op: Literal["linear", "conv2d"]
    wraps: ClassVar[type[nn.Module]]
    instead: ClassVar[str]

    def __init__(
        self, module: nn.Module, options: QATOptions | None = None, **overrides: Any
    ) -> None:
        if not isinstance(module, self.wraps):
            raise InvalidInputError(
                f"{type(self).__name__} wraps an nn.{self.wraps.__name__}, got "
                f"{type(module).__name__}; use {self.instead}"
            )
        super().__init__()
        opts = dataclasses.replace(options or QATOptions(), **overrides)
        self.options = opts
        self.weight_qtype = IntType(_check_bits("weight_bits", opts.weight_bits, 2), True)
        self.per_channel = bool(opts.per_channel)
        self.learnable = bool(opts.learnable)
        self.relu = bool(opts.relu)
        # The wrapped module's parameters themselves (not copies), as torch.ao's QAT modules.
        self.weight = module.weight
        self.bias = module.bias
        act = {"learnable": opts.learnable, "averaging_constant": opts.averaging_constant}
        self.input_quant = ActivationFakeQuant(opts.act_bits, **act)
        self.output_quant = (
            ActivationFakeQuant(opts.act_bits, **act) if opts.quantize_output else None
        )
        if self.learnable:
            init = self._observed_weight_qparams()
            self.weight_scale = nn.Parameter(init.scale.clone())

    @property
    def weight_granularity(self) -> Granularity:
        """PerAxis(0) (one scale per output channel) or PerTensor()."""
        return PerAxis(0) if self.per_channel else PerTensor()

    def _observed_weight_qparams(self) -> QParams:
        return choose_qparams(
            self.weight.detach(),
            self.weight_qtype,
            self.weight_granularity,
            symmetric=True,
            restricted=True,
        )

    def weight_qparams(self) -> QParams:
        """Weight QParams: from the weight's current range, or the learned step sizes."""
        if not self.learnable:
            return self._observed_weight_qparams()
        qmax = self.weight_qtype.qmax
        scale = self.weight_scale.detach().clamp_min(_EPS).to(torch.float32).clone()
        return QParams(scale, self.weight_qtype, self.weight_granularity, -qmax, qmax)

    def fake_quantized_weight(self) -> torch.Tensor:
        """The weight as the int8 module will see it (differentiable, straight through)."""
        qmax = self.weight_qtype.qmax
        axis = 0 if self.per_channel else None
        if self.learnable:
            if self.training:
                _floor_(self.weight_scale)
            scale = self.weight_scale.clamp_min(_EPS)
            return lsq_fake_quantize(self.weight, scale, None, -qmax, qmax, axis=axis)
        qp = self._observed_weight_qparams()
        return fake_quantize_ste(self.weight, qp.scale, None, qp.qmin, qp.qmax, axis=axis)

    def _op(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _conv_args(self) -> dict[str, Any]:
        return {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """fake-quant(input) → op with the fake-quantized weight → ReLU? → fake-quant(out)?"""
        y = self._op(self.input_quant(x), self.fake_quantized_weight())
        if self.relu:
            y = F.relu(y)
        if self.output_quant is not None:
            y = self.output_quant(y)
        return y

    def qat_state(self) -> QATState:
        """Float weight/bias and the QParams a convert step builds the int8 module from.

        Raises InvalidInputError when no training batch has set the activation ranges yet.
        """
        return QATState(
            op=self.op,
            weight=self.weight.detach().clone(),
            bias=None if self.bias is None else self.bias.detach().clone(),
            weight_qparams=self.weight_qparams(),
            input_qparams=self.input_quant.qparams(),
            output_qparams=None if self.output_quant is None else self.output_quant.qparams(),
            relu=self.relu,
            conv=self._conv_args(),
        )

    def extra_repr(self) -> str:
        gran = "per_channel" if self.per_channel else "per_tensor"
        return (
            f"weight={self.weight_qtype.name} {gran}, relu={self.relu}, "
            f"learnable={self.learnable}, bias={self.bias is not None}"
        )


class QATLinear(_QATModule):
    """A Linear (optionally fused with a following ReLU) trained with fake quantization.

    Args:
        linear: the float ``nn.Linear``; its weight and bias Parameters are reused (shared).
        options: a ``QATOptions`` (default: int8 weights per channel, uint8 activations,
            moving-average ranges).
        **overrides: fields of ``QATOptions`` given by keyword (``weight_bits=4``,
            ``learnable=True``...), applied over ``options``.

    Shapes: input (..., in_features) float; output (..., out_features) float.
    """

    op = "linear"
    wraps = nn.Linear
    instead = "QATConv2d for nn.Conv2d"

    def __init__(
        self, linear: nn.Linear, options: QATOptions | None = None, **overrides: Any
    ) -> None:
        super().__init__(linear, options, **overrides)
        self.in_features = linear.in_features
        self.out_features = linear.out_features

    def _op(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.linear(x, weight, self.bias)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, {super().extra_repr()}"


class QATConv2d(_QATModule):
    """A Conv2d (optionally fused with a following ReLU) trained with fake quantization.

    Args:
        conv: the float ``nn.Conv2d`` (any padding and padding_mode); its Parameters are
            reused.
        options, overrides: as ``QATLinear``.

    Shapes: input (N, C_in, H, W) float; output (N, C_out, H', W') float.
    """

    op = "conv2d"
    wraps = nn.Conv2d
    instead = "QATLinear for nn.Linear"

    def __init__(
        self, conv: nn.Conv2d, options: QATOptions | None = None, **overrides: Any
    ) -> None:
        super().__init__(conv, options, **overrides)
        self.in_channels = conv.in_channels
        self.out_channels = conv.out_channels
        self.kernel_size = conv.kernel_size
        self.stride = conv.stride
        self.padding = conv.padding
        self.padding_mode = conv.padding_mode
        self.dilation = conv.dilation
        self.groups = conv.groups
        self._input_padding = conv._reversed_padding_repeated_twice

    def _op(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        padding = self.padding
        if self.padding_mode != "zeros":  # as nn.Conv2d: pad the input, then no padding
            x, padding = F.pad(x, self._input_padding, mode=self.padding_mode), (0, 0)
        return F.conv2d(x, weight, self.bias, self.stride, padding, self.dilation, self.groups)

    def _conv_args(self) -> dict[str, Any]:
        return {
            "stride": self.stride,
            "padding": self.padding,
            "padding_mode": self.padding_mode,
            "dilation": self.dilation,
            "groups": self.groups,
        }

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, {super().extra_repr()}"
        )
