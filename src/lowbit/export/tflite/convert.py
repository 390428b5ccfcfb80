"""A lowbit int8-static module tree as TFLite int8 operators, in the model's own op order.

Each node of the traced forward (``trace.py``) becomes TFLite ops following the int8
quantization spec (https://ai.google.dev/edge/litert/models/quantization_spec; the numbers
are ``int8.py``'s):

- activations int8 asymmetric per tensor. lowbit's static layers use torch quint8 (uint8,
  zero point z); the same grid in int8 is code - 128 with zero point z - 128, so every
  scale and code carries over exactly;
- weights int8 symmetric per output channel (zero point 0, codes in [-127, 127]):
  CONV_2D [O, H, W, I] with quantized_dimension 0, DEPTHWISE_CONV_2D [1, H, W, O] with
  quantized_dimension 3, FULLY_CONNECTED [O, I] with quantized_dimension 0;
- bias int32 with scale input_scale * weight_scale[c] and zero point 0. lowbit keeps its
  bias in float (torch's int8 kernels add it in float before requantizing): it is rounded
  to the nearest int32, ties to even (numpy.rint), an error of at most half a unit of
  input_scale * weight_scale;
- NHWC layout inside the graph. The .tflite input is the PyTorch model's input as is (NCHW
  float32, any batch size): one float TRANSPOSE turns it NHWC, then QUANTIZE with the first
  layer's input parameters. A float output leaves through DEQUANTIZE (and a TRANSPOSE back
  to NCHW when it is 4-D), so both models take and give the same tensors;
- flatten of NHWC data: when every consumer is a QuantLinear, the flatten is a bare
  RESHAPE and those layers get their weight columns permuted from (C, H, W) to (H, W, C)
  order; otherwise a TRANSPOSE to NCHW comes first.

A static layer whose output lowbit dequantizes (keep_quantized_output=False) is followed by
DEQUANTIZE, and the next layer QUANTIZEs with its own input parameters, as lowbit does.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from lowbit.errors import InvalidInputError
from lowbit.export.tflite.flatbuffer import TfliteBuilder
from lowbit.export.tflite.int8 import activation_qparams, int32_bias, same_pads, weight_codes
from lowbit.formats.affine import QParams
from lowbit.nn import QuantAdd, QuantConv2d, QuantLinear
from lowbit.nn.base import KernelModule

NCHW_TO_NHWC = (0, 2, 3, 1)
NHWC_TO_NCHW = (0, 3, 1, 2)
SUPPORTED = (
    "lowbit QuantConv2d / QuantLinear / QuantAdd in static mode (int8-static), MaxPool2d, "
    "AvgPool2d, AdaptiveAvgPool2d (divisible sizes), ReLU, Flatten (or x.reshape(x.size(0), "
    "-1)), Identity, Dropout"
)
_PASSTHROUGH = (nn.Identity, nn.Dropout)
_RELU_FUNCTIONS = (F.relu, torch.relu)
_FLOAT_ADDS = (operator.add, operator.iadd, torch.add)


@dataclass(frozen=True)
class Value:
    """A traced tensor as it lives in the .tflite graph.

    Attributes:
        tensor: index of the TFLite tensor.
        shape: the PyTorch shape (4-D values are NCHW here and NHWC in the file).
        qparams: (scale, int8 zero point), or None for float32.
        chw: a flatten of NHWC data whose features are in (H, W, C) order of this
            (C, H, W) map; only QuantLinear consumes it (with permuted weight columns).
    """

    tensor: int
    shape: tuple[int, ...]
    qparams: tuple[float, int] | None
    chw: tuple[int, int, int] | None = None


class GraphWriter:
    """Walks the traced graph and writes each node's TFLite ops into ``builder``."""

    def __init__(self, gm: fx.GraphModule, shapes: dict, builder: TfliteBuilder) -> None:
        self.gm, self.shapes, self.b = gm, shapes, builder
        self.values: dict[str, Value] = {}
        self.inputs: list[int] = []
        self.outputs: list[int] = []
        self.modules = dict(gm.named_modules())

    def write(self) -> None:
        """Write every node, in the traced order."""
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                self._input(node)
            elif node.op == "output":
                self._output(node)
            elif node.op == "call_module":
                self._module(node, self.modules[node.target])
            elif node.op in ("call_function", "call_method"):
                self._function(node)
            else:
                self._unsupported(node, f"{node.op} {node.target}")

    # ------------------------------------------------------------------ tensors
    def _activation(self, name: str, shape: tuple[int, ...], qparams: tuple | None) -> int:
        """An activation tensor stored in ``shape`` (the batch resizable)."""
        dtype = "float32" if qparams is None else "int8"
        scale = None if qparams is None else [qparams[0]]
        zero_point = None if qparams is None else [qparams[1]]
        signature = (-1, *shape[1:])
        return self.b.tensor(
            name, shape, dtype, scale=scale, zero_point=zero_point, signature=signature
        )

    @staticmethod
    def _stored(shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(shape[i] for i in NCHW_TO_NHWC) if len(shape) == 4 else shape

    def _new(self, name: str, shape: tuple, qparams: tuple | None, **kw: object) -> Value:
        return Value(self._activation(name, self._stored(shape), qparams), shape, qparams, **kw)  # type: ignore[arg-type]

    def _arg(self, node: fx.Node, what: str) -> Value:
        if not isinstance(node, fx.Node) or node.name not in self.values:
            self._unsupported(node, f"{what}: a constant or non-tensor argument")
        return self.values[node.name]

    def _quantize(self, x: Value, qparams: QParams | None, what: str) -> Value:
        """``x`` as int8: as it is when already int8 (lowbit uses a quint8 input as it is),
        else QUANTIZE with the layer's calibrated input parameters."""
        if x.qparams is not None:
            return x
        out = replace(
            self._new(f"{what}/quantize", x.shape, activation_qparams(qparams, what)), chw=x.chw
        )
        self.b.op("QUANTIZE", [x.tensor], [out.tensor])
        return out

    def _dequantize(self, x: Value, name: str) -> Value:
        if x.qparams is None:
            return x
        out = replace(self._new(f"{name}/dequantize", x.shape, None), chw=x.chw)
        self.b.op("DEQUANTIZE", [x.tensor], [out.tensor])
        return out

    def _transpose(self, x: Value, perm: tuple[int, ...], name: str, shape: tuple) -> int:
        """TRANSPOSE ``x`` into a new tensor stored as ``shape``; returns its index."""
        out = self._activation(name, shape, x.qparams)
        perm_t = self.b.const_int32(f"{name}/perm", perm)
        self.b.op("TRANSPOSE", [x.tensor, perm_t], [out], int8=x.qparams is not None)
        return out

    # ------------------------------------------------------------------ graph ends
    def _input(self, node: fx.Node) -> None:
        if self.inputs:
            self._unsupported(node, "a second model input (the exporter takes one tensor)")
        shape = self.shapes[node.name]
        tensor = self._activation(node.name, shape, None)
        self.inputs.append(tensor)
        value = Value(tensor, shape, None)
        if len(shape) == 4:
            value = Value(
                self._transpose(value, NCHW_TO_NHWC, f"{node.name}/nhwc", self._stored(shape)),
                shape,
                None,
            )
        self.values[node.name] = value

    def _output(self, node: fx.Node) -> None:
        (arg,) = node.args
        x = self._dequantize(self._arg(arg, "the model output"), "output")
        tensor = x.tensor
        if len(x.shape) == 4:
            tensor = self._transpose(x, NHWC_TO_NCHW, "output/nchw", x.shape)
        self.outputs.append(tensor)

    # ------------------------------------------------------------------ dispatch
    def _module(self, node: fx.Node, m: nn.Module) -> None:
        name = node.target
        handlers: list[tuple[type | tuple, Callable]] = [
            (QuantConv2d, self._conv),
            (QuantLinear, self._linear),
            (QuantAdd, self._add),
            ((nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d), self._pool),
            (nn.ReLU, lambda n, m: self._relu(n)),
            (nn.Flatten, lambda n, m: self._flatten(n, m.start_dim, m.end_dim)),
            (_PASSTHROUGH, lambda n, m: self._alias(n)),
        ]
        for cls, handler in handlers:
            if isinstance(m, cls):
                handler(node, m)
                return
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            raise InvalidInputError(
                f"layer {name!r} is a float {type(m).__name__}: .tflite export writes int8-"
                "static models only (every Linear/Conv2d quantized); quantize the model with "
                "lowbit.quantize(model, 'int8-static', calib_data=...) and no skip rule for it"
            )
        self._unsupported(node, f"module {type(m).__name__}")

    def _function(self, node: fx.Node) -> None:
        target = node.target
        if target in _RELU_FUNCTIONS or target == "relu":
            self._relu(node)
        elif target in (torch.flatten, "flatten"):
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
            self._flatten(node, start, end)
        elif target == "size":  # x.size(0) of x.view(x.size(0), -1): no tensor to write
            return
        elif target in ("view", "reshape") and self._is_batch_flatten(node):
            self._flatten(node, 1, -1)
        elif target in _FLOAT_ADDS or target in ("add", "add_"):
            self._unsupported(
                node, "a float '+' (write residual adds as lowbit.nn.Add modules so lowbit "
                "calibrates and quantizes them)"
            )  # fmt: skip
        else:
            self._unsupported(node, f"{node.op} {getattr(target, '__name__', target)}")

    def _is_batch_flatten(self, node: fx.Node) -> bool:
        """x.view / x.reshape to [batch, everything else] (what flatten(1) gives)."""
        source = node.args[0]
        before, after = self.shapes.get(getattr(source, "name", "")), self.shapes[node.name]
        return (
            before is not None
            and len(after) == 2
            and after[0] == before[0]
            and after[1] == int(np.prod(before[1:]))
        )

    def _unsupported(self, node: object, what: str) -> None:
        name = getattr(node, "target", node) if getattr(node, "op", "") == "call_module" else (
            getattr(node, "name", node)
        )  # fmt: skip
        raise InvalidInputError(
            f"{name!r} ({what}) cannot be written as .tflite; the exporter supports "
            f"{SUPPORTED}. Replace it, or export to ONNX (lowbit export --format onnx)"
        )

    # ------------------------------------------------------------------ ops
    def _alias(self, node: fx.Node) -> None:
        self.values[node.name] = self._arg(node.args[0], str(node.target))

    def _check_static(self, name: str, m: KernelModule) -> None:
        if m.spec.mode != "static":
            raise InvalidInputError(
                f"layer {name!r} is a {type(m).__name__} in mode {m.spec.mode!r}; .tflite "
                "export writes int8-static layers (int8 activations with calibrated "
                "parameters): quantize with preset 'int8-static'"
            )

    def _finish_layer(self, node: fx.Node, m: KernelModule, out: Value) -> None:
        """Keep the int8 output, or DEQUANTIZE it where lowbit returns float."""
        keep = m.spec.keep_quantized_output
        self.values[node.name] = out if keep else self._dequantize(out, node.name)

    def _conv(self, node: fx.Node, m: QuantConv2d) -> None:
        name = str(node.target)
        self._check_static(name, m)
        spec = m.spec
        if m.padding_mode != "zeros" and any(m.input_padding):
            raise InvalidInputError(
                f"layer {name!r} pads in mode {m.padding_mode!r}; the .tflite exporter writes "
                "zero padding only: use padding_mode='zeros'"
            )
        x = self._quantize(self._arg(node.args[0], name), spec.input_qparams, name)
        out_shape = self.shapes[node.name]
        codes, w_scales = weight_codes(name, m.weight, 4)
        channels = x.shape[1]
        if spec.groups == 1:
            kind, filt, axis = "CONV_2D", codes.transpose(0, 2, 3, 1), 0
        elif spec.groups == channels:
            kind, filt, axis = "DEPTHWISE_CONV_2D", codes.transpose(1, 2, 3, 0), 3
        else:
            raise InvalidInputError(
                f"layer {name!r} is a grouped convolution (groups={spec.groups}); the .tflite "
                "exporter writes groups=1 and depthwise (groups = in_channels) only"
            )
        x, padding = self._conv_padding(x, m, name)
        w, b = self._weight_and_bias(name, filt, w_scales, axis, m.bias, x)
        out = self._new(name, out_shape, activation_qparams(spec.output_qparams, name))
        fields = dict(
            padding=padding,
            strideH=spec.stride[0],
            strideW=spec.stride[1],
            dilationHFactor=spec.dilation[0],
            dilationWFactor=spec.dilation[1],
            fusedActivationFunction=self._activation_fn(spec.relu),
        )
        if kind == "CONV_2D":
            options = ("Conv2DOptions", self.b.options("Conv2DOptionsT", **fields))
        else:
            fields["depthMultiplier"] = out_shape[1] // channels
            options = (
                "DepthwiseConv2DOptions",
                self.b.options("DepthwiseConv2DOptionsT", **fields),
            )
        self.b.op(kind, [x.tensor, w, b], [out.tensor], options)
        self._finish_layer(node, m, out)

    def _conv_padding(self, x: Value, m: QuantConv2d, name: str) -> tuple[Value, int]:
        """The layer's zero padding (kernel padding plus input_padding) for ``_padding``."""
        spec = m.spec
        left, right, top, bottom = m.input_padding
        pads = (
            (spec.padding[0] + top, spec.padding[0] + bottom),
            (spec.padding[1] + left, spec.padding[1] + right),
        )
        geometry = (tuple(m.weight.shape[2:]), spec.stride, spec.dilation)
        return self._padding(x, pads, geometry, name, fill="zero")

    def _padding(
        self, x: Value, pads: tuple, geometry: tuple, name: str, *, fill: str | None,
        same: bool = True,
    ) -> tuple[Value, int]:  # fmt: skip
        """(input, TFLite padding) for torch's explicit ``pads`` ((top, bottom), (left,
        right)) of a window op with ``geometry`` (kernel, stride, dilation): VALID when there
        are none; SAME where TFLite's SAME gives the same pads for this input size (its
        windows skip padded cells: torch's max pool, and avg pool without
        count_include_pad); else PAD + VALID, filled with real 0 (``fill="zero"``: int8 PAD
        uses the zero point) or the lowest value (``fill="lowest"``: PADV2, as -inf for a
        max pool). ``fill=None``: no explicit padding can stand in (an error); ``same=False``:
        SAME cannot (an average that counts the padded zeros)."""
        valid = self.b.fb.Padding.VALID
        if pads == ((0, 0), (0, 0)):
            return x, valid
        kernel, stride, dilation = geometry
        tflite_same = tuple(
            same_pads(x.shape[2 + i], kernel[i], stride[i], dilation[i]) for i in range(2)
        )
        if same and tflite_same == pads:
            return x, self.b.fb.Padding.SAME
        if fill is None:
            raise InvalidInputError(
                f"{name!r}: its padding {pads} is not TFLite's SAME for a {x.shape[2:]} input "
                "and cannot be written as a PAD; use count_include_pad=True or no padding"
            )
        n, c, h, w = x.shape
        out = self._new(f"{name}/pad", (n, c, h + sum(pads[0]), w + sum(pads[1])), x.qparams)
        paddings = self.b.tensor(
            f"{name}/paddings", (4, 2), "int32",
            data=np.array([(0, 0), *pads, (0, 0)], dtype=np.int32),
        )  # fmt: skip
        int8 = x.qparams is not None
        if fill == "zero":
            self.b.op("PAD", [x.tensor, paddings], [out.tensor], int8=int8)
            return out, valid
        if int8:  # PADV2's value tensor shares the input's quantization (pad.cc checks it)
            scale, zero_point = x.qparams  # type: ignore[misc]
            value = self.b.tensor(
                f"{name}/pad_value", (), "int8", data=np.array(-128, dtype=np.int8),
                scale=[scale], zero_point=[zero_point],
            )  # fmt: skip
        else:
            lowest = np.array(np.finfo(np.float32).min, dtype=np.float32)
            value = self.b.tensor(f"{name}/pad_value", (), "float32", data=lowest)
        self.b.op("PADV2", [x.tensor, paddings, value], [out.tensor], int8=int8)
        return out, valid

    def _weight_and_bias(
        self, name: str, codes: np.ndarray, scales: np.ndarray, axis: int,
        bias: torch.Tensor | None, x: Value,
    ) -> tuple[int, int]:  # fmt: skip
        """The int8 weight tensor (``codes`` in TFLite's layout, per-channel ``scales`` along
        ``axis``, zero points 0) and the int32 bias at scale input_scale * weight_scale."""
        w = self.b.tensor(
            f"{name}/weight", codes.shape, "int8", data=codes, scale=scales,
            zero_point=[0] * len(scales), axis=axis,
        )  # fmt: skip
        q_bias, b_scales = int32_bias(name, bias, x.qparams[0], scales)  # type: ignore[index]
        b = self.b.tensor(
            f"{name}/bias", q_bias.shape, "int32", data=q_bias, scale=b_scales,
            zero_point=[0] * len(q_bias),
        )  # fmt: skip
        return w, b

    def _activation_fn(self, relu: bool) -> int:
        kinds = self.b.fb.ActivationFunctionType
        return kinds.RELU if relu else kinds.NONE

    def _linear(self, node: fx.Node, m: QuantLinear) -> None:
        name = str(node.target)
        self._check_static(name, m)
        spec = m.spec
        x = self._quantize(self._arg(node.args[0], name), spec.input_qparams, name)
        if len(x.shape) == 4:
            raise InvalidInputError(
                f"layer {name!r} takes a 4-D input; the .tflite exporter keeps 4-D maps NHWC, "
                "so flatten them (nn.Flatten / torch.flatten) before a Linear"
            )
        codes, w_scales = weight_codes(name, m.weight, 2)
        if x.chw is not None:  # the flatten before us kept NHWC order: permute the columns
            c, h, w = x.chw
            codes = codes.reshape(-1, c, h, w).transpose(0, 2, 3, 1).reshape(len(codes), -1)
        w, b = self._weight_and_bias(name, codes, w_scales, 0, m.bias, x)
        out = self._new(name, self.shapes[node.name], activation_qparams(spec.output_qparams, name))
        options = self.b.options(
            "FullyConnectedOptionsT",
            fusedActivationFunction=self._activation_fn(spec.relu),
            keepNumDims=len(x.shape) > 2,
        )
        self.b.op(
            "FULLY_CONNECTED", [x.tensor, w, b], [out.tensor], ("FullyConnectedOptions", options)
        )
        self._finish_layer(node, m, out)

    def _add(self, node: fx.Node, m: QuantAdd) -> None:
        name = str(node.target)
        spec = m.spec
        a = self._quantize(self._arg(node.args[0], name), spec.input_qparams, f"{name}/a")
        b = self._quantize(self._arg(node.args[1], name), spec.other_qparams, f"{name}/b")
        if a.chw != b.chw:
            self._unsupported(node, "an add of a flattened NHWC map and another tensor")
        out = self._new(name, self.shapes[node.name], activation_qparams(spec.output_qparams, name))
        out = replace(out, chw=a.chw)
        options = self.b.options(
            "AddOptionsT", fusedActivationFunction=self._activation_fn(spec.relu)
        )
        self.b.op("ADD", [a.tensor, b.tensor], [out.tensor], ("AddOptions", options))
        self._finish_layer(node, m, out)

    def _pool(self, node: fx.Node, m: nn.Module) -> None:
        name = str(node.target)
        x = self._arg(node.args[0], name)
        out_shape = self.shapes[node.name]
        if len(x.shape) != 4:
            self._unsupported(node, f"{type(m).__name__} of a {len(x.shape)}-D tensor")
        pads, fill, same = ((0, 0), (0, 0)), None, True
        if isinstance(m, nn.AdaptiveAvgPool2d):
            (h, w), (oh, ow) = x.shape[2:], out_shape[2:]
            if h % oh or w % ow:
                self._unsupported(node, f"AdaptiveAvgPool2d from {h}x{w} to {oh}x{ow}")
            kernel = stride = (h // oh, w // ow)
        else:
            kernel = nn.modules.utils._pair(m.kernel_size)
            stride = nn.modules.utils._pair(m.stride or m.kernel_size)
            pads = tuple((p, p) for p in nn.modules.utils._pair(m.padding))
            dilation = nn.modules.utils._pair(getattr(m, "dilation", 1))
            if m.ceil_mode or dilation != (1, 1):
                self._unsupported(node, f"{type(m).__name__} with ceil_mode or dilation")
            if getattr(m, "divisor_override", None) or getattr(m, "return_indices", False):
                self._unsupported(node, f"{type(m).__name__} with divisor_override/return_indices")
            if isinstance(m, nn.MaxPool2d):
                fill = "lowest"
            elif m.count_include_pad:  # padded zeros count: PAD, then a VALID average
                fill, same = "zero", False
        geometry = (kernel, stride, (1, 1))
        x, padding = self._padding(x, pads, geometry, name, fill=fill, same=same)
        kind = "MAX_POOL_2D" if isinstance(m, nn.MaxPool2d) else "AVERAGE_POOL_2D"
        out = self._new(node.name, out_shape, x.qparams)  # int8 pooling keeps the parameters
        options = self.b.options(
            "Pool2DOptionsT",
            padding=padding,
            strideH=stride[0],
            strideW=stride[1],
            filterHeight=kernel[0],
            filterWidth=kernel[1],
        )
        self.b.op(
            kind, [x.tensor], [out.tensor], ("Pool2DOptions", options), int8=x.qparams is not None
        )
        self.values[node.name] = out

    def _relu(self, node: fx.Node) -> None:
        x = self._arg(node.args[0], node.name)
        out = replace(self._new(node.name, x.shape, x.qparams), chw=x.chw)
        self.b.op("RELU", [x.tensor], [out.tensor], int8=x.qparams is not None)
        self.values[node.name] = out

    def _flatten(self, node: fx.Node, start: int, end: int) -> None:
        x = self._arg(node.args[0], node.name)
        ndim = len(x.shape)
        if start % ndim != 1 or end % ndim != ndim - 1:
            self._unsupported(node, f"flatten(start_dim={start}, end_dim={end})")
        if ndim == 2:
            self.values[node.name] = x
            return
        out_shape = self.shapes[node.name]
        source, chw = x.tensor, None
        if ndim == 4 and x.shape[2] * x.shape[3] > 1:
            if self._feeds_linears_only(node):
                chw = x.shape[1:]
            else:
                source = self._transpose(x, NHWC_TO_NCHW, f"{node.name}/nchw", x.shape)
        out = replace(self._new(node.name, out_shape, x.qparams), chw=chw)
        new_shape = self.b.const_int32(f"{node.name}/shape", (-1, *out_shape[1:]))
        options = self.b.options("ReshapeOptionsT", newShape=[-1, *out_shape[1:]])
        self.b.op("RESHAPE", [source, new_shape], [out.tensor], ("ReshapeOptions", options))
        self.values[node.name] = out

    def _feeds_linears_only(self, node: fx.Node) -> bool:
        """Every path from ``node`` (through identities and ReLUs) ends in a QuantLinear."""
        for user in node.users:
            m = self.modules.get(user.target) if user.op == "call_module" else None
            if isinstance(m, QuantLinear) and user.args[0] is node:
                continue
            through = isinstance(m, (*_PASSTHROUGH, nn.ReLU)) or (
                user.op != "call_module"
                and (user.target in _RELU_FUNCTIONS or user.target == "relu")
            )
            if not (through and self._feeds_linears_only(user)):
                return False
        return bool(node.users)
