"""Export twins: each lowbit quantized module rewritten as float torch code around the custom
ops of ops.py, so that ``torch.export`` sees one traceable graph and the ONNX functions
write the QDQ / integer nodes the runtimes fuse.

A twin holds exactly the values lowbit chose (codes, scales, zero points, activation
QParams); ``export_copy`` builds a copy of the user's model with every quantized module
replaced by its twin (the user's model is not modified). Layers the exporter cannot express
(NF4, binary/ternary, fp8 weights, int8 static weights that are not int8) are named in one
error; ``skip`` leaves such layers in float (their dequantized weights, float op).
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.errors import UnsupportedFormatError
from lowbit.formats.granularity import PerAxis, PerGroup, PerTensor
from lowbit.formats.qtypes import IntType
from lowbit.kernels import check_activation_qparams
from lowbit.nn import QuantAdd, QuantConv2d, QuantEmbedding, QuantLinear
from lowbit.nn.base import KernelModule
from lowbit.tensors import IntPackedTensor, QTensor

OPS = torch.ops.lowbit_onnx
INT8 = IntType(8, True)
NBITS = (2, 4, 8)  # MatMulNBits' bit widths (ORT ContribOperators.md)


class CannotExpressError(Exception):
    """A layer the exporter cannot express; the message says why (collected, not raised)."""


# ---------------------------------------------------------------- activation QParams
ActQ = tuple[float, int, bool]  # scale, zero point, signed codes


def activation(qparams: Any, target: str) -> ActQ | None:
    """lowbit's uint8 QParams as (scale, zero point, signed); ``target="tensorrt"`` gives
    TensorRT's symmetric int8 (zero point 0) over the same range: s = max(|lo|, |hi|) / 127."""
    if qparams is None:
        return None
    scale, zp = check_activation_qparams(qparams, "activation qparams")
    if target != "tensorrt":
        return scale, zp, False
    bound = max(abs(scale * (0 - zp)), abs(scale * (255 - zp)))
    return (bound / 127 if bound > 0 else 1.0), 0, True


def fake_quant(x: torch.Tensor, q: ActQ | None) -> torch.Tensor:
    return x if q is None else OPS.fake_quant(x, q[0], q[1], q[2])


# ---------------------------------------------------------------- int8 weights
def int8_channel_weight(weight: QTensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes int8, scale [out] or 0-D) of an int8 symmetric per-channel/per-tensor weight."""
    if not isinstance(weight, IntPackedTensor) or weight.qtype != INT8:
        raise CannotExpressError(f"needs int8 integer weights, got {_describe(weight)}")
    if weight.form != "symmetric":
        raise CannotExpressError("needs symmetric int8 weights (zero point 0)")
    g = weight.granularity
    if isinstance(g, PerTensor):
        return weight.codes(), weight.scale.float().reshape(())
    if isinstance(g, PerAxis) and g.axis % len(weight.shape) == 0:
        return weight.codes(), weight.scale.float().reshape(-1)
    raise CannotExpressError("needs per-output-channel or per-tensor int8 scales")


def _describe(weight: QTensor | None) -> str:
    if weight is None:
        return "no weight"
    name = getattr(getattr(weight, "qtype", None), "name", None) or weight.kind
    return f"{name} ({weight.kind})"


class _Geometry(nn.Module):
    """The float op (linear or conv2d) of a QuantLinear / QuantConv2d."""

    def __init__(self, module: KernelModule) -> None:
        super().__init__()
        spec = module.spec
        self.conv = spec.op == "conv2d"
        self.stride, self.padding = spec.stride, spec.padding
        self.dilation, self.groups = spec.dilation, spec.groups
        self.input_padding = getattr(module, "input_padding", (0, 0, 0, 0))
        self.padding_mode = getattr(module, "padding_mode", "zeros")

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        if not any(self.input_padding):
            return x
        mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
        return F.pad(x, self.input_padding, mode=mode)

    def op(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        """conv2d, or x @ W_t + b for a linear layer given W_t [K, N]: MatMul, not the Gemm
        F.linear becomes, because ORT fuses DQ -> MatMul into its integer kernels
        (QLinearMatMul, MatMulIntegerToFloat) and leaves a QDQ Gemm in float."""
        if self.conv:
            return F.conv2d(x, w, b, self.stride, self.padding, self.dilation, self.groups)
        y = torch.matmul(x, w)
        return y if b is None else y + b


# ---------------------------------------------------------------- twins
class StaticTwin(_Geometry):
    """Static int8: Q/DQ of the input, DQ(int8 W per channel), DQ(int32 bias) (ORT's QDQ
    convention: bias scale = input scale x weight scale, zero point 0; float bias for
    TensorRT, which quantizes no bias), the float op, ReLU, Q/DQ of the output."""

    def __init__(self, module: KernelModule, target: str) -> None:
        super().__init__(module)
        codes, scale = int8_channel_weight(module.weight)
        # a linear weight is stored [K, N] with its scales along axis 1 (see _Geometry.op)
        self.axis = 0 if self.conv else 1
        self.register_buffer("w_codes", codes if self.conv else codes.t().contiguous())
        self.register_buffer("w_scale", scale)
        self.in_q = activation(module.spec.input_qparams, target)
        self.out_q = activation(module.spec.output_qparams, target)
        self.relu = module.spec.relu
        bias = module.bias
        # QLinearConv takes an int32 bias (DQ with scale s_x·s_w); a MatMul's float bias is
        # fused into MatMulIntegerToFloat as it is (and TensorRT quantizes no bias).
        self.int_bias = bias is not None and self.in_q is not None and target != "tensorrt"
        if self.int_bias:
            b_scale = (self.in_q[0] * scale.double()).float()
            b_codes = torch.round(bias.double() / b_scale.double())
            self.register_buffer("b_codes", b_codes.clamp(-(2**31), 2**31 - 1).to(torch.int32))
            self.register_buffer("b_scale", b_scale)
        else:
            self.register_buffer("b_float", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = fake_quant(self.pad(x), self.in_q)
        w = OPS.dequantize(self.w_codes, self.w_scale, None, self.axis, 0)
        b = (
            OPS.dequantize(self.b_codes, self.b_scale, None, 0, 0)
            if self.int_bias
            else self.b_float
        )
        y = self.op(x, w, b)
        return fake_quant(torch.relu(y) if self.relu else y, self.out_q)


class AddTwin(nn.Module):
    """QuantAdd: each input Q/DQ'd with its QParams (when it has them), add, ReLU, Q/DQ."""

    def __init__(self, module: QuantAdd, target: str) -> None:
        super().__init__()
        spec = module.spec
        self.a_q = activation(spec.input_qparams, target)
        self.b_q = activation(spec.other_qparams, target)
        self.out_q = activation(spec.output_qparams, target)
        self.relu = spec.relu

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        y = fake_quant(a, self.a_q) + fake_quant(b, self.b_q)
        return fake_quant(torch.relu(y) if self.relu else y, self.out_q)


class DynamicLinearTwin(nn.Module):
    """Dynamic int8 Linear: per-batch uint8 (DynamicQuantizeLinear + MatMulInteger) or
    lowbit's per-token int8 activations, int8 per-channel weights, int32 accumulation; an
    input transform as a Mul before the quantization and the float outlier channels as
    Gather + MatMul added to the output."""

    def __init__(self, module: QuantLinear, target: str) -> None:
        super().__init__()
        codes, scale = int8_channel_weight(module.weight)
        spec = module.spec
        self.portable = target == "openvino"
        self.register_buffer("w_t", codes.t().contiguous())
        self.register_buffer("w_scale", scale.expand(codes.shape[0]).contiguous())
        self.register_buffer("bias", module.bias)
        self.register_buffer("col_sum", codes.sum(dim=1, dtype=torch.int32))
        self.per_token, self.zero_point, self.relu = (
            spec.per_token, spec.token_zero_point, spec.relu,
        )  # fmt: skip
        if module.outlier_channels is not None and self.relu:
            raise CannotExpressError("float outlier channels with a fused ReLU are not written")
        self.register_buffer("input_scale", module.input_scale)
        self.register_buffer("outlier_channels", module.outlier_channels)
        weight_t = None if module.outlier_weight is None else module.outlier_weight.t()
        self.register_buffer("outlier_weight_t", weight_t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xq = x if self.input_scale is None else x * self.input_scale
        if self.per_token:
            y = OPS.per_token_linear(
                xq, self.w_t, self.w_scale, self.col_sum, self.bias, self.relu, self.zero_point,
                self.portable,
            )  # fmt: skip
        else:
            y = OPS.dynamic_linear(xq, self.w_t, self.w_scale, self.bias, self.relu)
        if self.outlier_channels is None:
            return y
        return y + torch.matmul(x.index_select(-1, self.outlier_channels), self.outlier_weight_t)


class DynamicConvTwin(_Geometry):
    """Dynamic Conv2d: DynamicQuantizeLinear + DequantizeLinear of the input, DQ(int8 W)."""

    def __init__(self, module: QuantConv2d) -> None:
        super().__init__(module)
        codes, scale = int8_channel_weight(module.weight)
        self.register_buffer("w_codes", codes)
        self.register_buffer("w_scale", scale)
        self.register_buffer("bias", module.bias)
        self.relu = module.spec.relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = OPS.dynamic_fake_quant(self.pad(x))
        y = self.op(x, OPS.dequantize(self.w_codes, self.w_scale, None, 0, 0), self.bias)
        return torch.relu(y) if self.relu else y


def nbits_block(k: int, granularity: Any) -> int:
    """MatMulNBits' block size: the group size, or for per-channel scales the largest power
    of two <= 128 dividing K (the channel's scale repeated per block: exact)."""
    if isinstance(granularity, PerGroup):
        return granularity.size
    block = 128
    while block > 16 and k % block:
        block //= 2
    return block


def nbits_blocks(weight: QTensor | None) -> dict[str, Any]:
    """An integer weight [N, K] as MatMulNBits blocks: unsigned codes u = q − qtype.qmin
    packed low bits first, scales [N, blocks] float32, zero points (uint8 packed, or float
    for the offset form: x = s·(u − z)), ``block_size``."""
    if not isinstance(weight, IntPackedTensor) or weight.qtype.bits not in NBITS:
        raise CannotExpressError(
            f"MatMulNBits takes {'/'.join(map(str, NBITS))}-bit integer weights, "
            f"got {_describe(weight)}"
        )
    g = weight.granularity
    if not (isinstance(g, PerGroup) and g.axis % 2 == 1) and not (
        isinstance(g, PerAxis) and g.axis % 2 == 0
    ):
        raise CannotExpressError("MatMulNBits needs per-group (along K) or per-channel scales")
    n, k = weight.shape
    bits, block = weight.qtype.bits, nbits_block(k, g)
    if block < 16 or block & (block - 1):
        raise CannotExpressError(f"MatMulNBits needs a power-of-two block size >= 16, got {block}")
    blocks = -(-k // block)
    qp = weight.qparams
    scale = qp.scale.float().reshape(n, -1)
    u = (weight.codes().to(torch.int32) - weight.qtype.qmin).to(torch.uint8)
    reps = blocks if isinstance(g, PerAxis) else 1
    scale = scale.repeat_interleave(reps, dim=1) if reps > 1 else scale
    zero_points: torch.Tensor | None = None
    if qp.zero_point is not None:
        z = (qp.zero_point.to(torch.int32) - weight.qtype.qmin).reshape(n, -1)
        zero_points = pack_rows(z.repeat_interleave(reps, dim=1).to(torch.uint8), bits)
    elif qp.offset is not None:  # x = s·(q − qmin) + L = s·(u − z), z = qmin − qtype.qmin − L/s
        offset = qp.offset.float().reshape(n, -1).repeat_interleave(reps, dim=1)
        zero_points = (qp.qmin - weight.qtype.qmin) - offset / scale
    padded = F.pad(u, (0, blocks * block - k)).reshape(n, blocks, block)
    return {
        "packed": pack_rows(padded.reshape(n * blocks, block), bits).reshape(n, blocks, -1),
        "scales": scale.contiguous(),
        "zero_points": zero_points,
        "block_size": block,
        "bits": bits,
    }


def pack_rows(u: torch.Tensor, bits: int) -> torch.Tensor:
    """Rows of unsigned ``bits``-bit codes packed into bytes, element j of a byte in bits
    j·b .. j·b + b − 1 (MatMulNBits' layout); rows padded to whole bytes."""
    per = 8 // bits
    rows, cols = u.shape
    u = F.pad(u, (0, (-cols) % per)).reshape(rows, -1, per).to(torch.int32)
    shifts = torch.arange(0, 8, bits, dtype=torch.int32)
    return (u << shifts).sum(dim=-1).to(torch.uint8)


class NBitsLinearTwin(nn.Module):
    """Weight-only integer Linear: com.microsoft MatMulNBits (block size = lowbit's group
    size), or with ``opset >= 21`` standard blocked DequantizeLinear + MatMul."""

    def __init__(self, module: QuantLinear, opset: int) -> None:
        super().__init__()
        if module.spec.relu:
            raise CannotExpressError("weight-only with a fused ReLU is not written yet")
        parts = nbits_blocks(module.weight)
        self.k = module.in_features
        self.bits, self.block = parts["bits"], parts["block_size"]
        self.standard = opset >= 21
        if self.standard:  # [K, N] codes, [blocks, N] scales: blocked along axis 0
            weight = module.weight
            self.register_buffer("codes_t", weight.codes().t().contiguous())
            qp = weight.qparams
            n = weight.shape[0]
            self.register_buffer("scale_t", parts["scales"].t().contiguous())
            zp = None
            if qp.zero_point is not None:
                zp = qp.zero_point.reshape(n, -1).to(weight.qtype.storage)
                zp = zp.repeat_interleave(self.scale_t.shape[0] // zp.shape[1], dim=1)
                zp = zp.t().contiguous()
            elif qp.offset is not None:
                raise CannotExpressError("the offset form has no integer zero point for opset 21")
            self.register_buffer("zp_t", zp)
        else:
            self.register_buffer("packed", parts["packed"])
            self.register_buffer("scales", parts["scales"])
            self.register_buffer("zero_points", parts["zero_points"])
        self.register_buffer("bias", module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.standard:
            w = OPS.dequantize(self.codes_t, self.scale_t, self.zp_t, 0, self.block)
            y = torch.matmul(x, w)
        else:
            y = OPS.matmul_nbits(
                x, self.packed, self.scales, self.zero_points, self.k, self.bits, self.block
            )
        return y if self.bias is None else y + self.bias


class EmbeddingTwin(nn.Module):
    """An int8-per-row embedding table: Gather of the int8 rows and of their scales."""

    def __init__(self, module: QuantEmbedding) -> None:
        super().__init__()
        weight = module.weight
        codes, scale = int8_channel_weight(weight)
        self.register_buffer("codes", codes)
        self.register_buffer("scale", scale.expand(codes.shape[0]).contiguous())

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return OPS.gather_rows(ids, self.codes, self.scale)


class FloatTwin(_Geometry):
    """A skipped layer in float: lowbit's dequantized weight, the float op."""

    def __init__(self, module: KernelModule) -> None:
        super().__init__(module)
        self.embedding = module.spec.op == "embedding"
        weight = module.weight.dequantize(torch.float32)
        linear = not (self.conv or self.embedding)
        self.register_buffer("weight", weight.t().contiguous() if linear else weight)
        self.register_buffer("bias", module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.embedding:
            return F.embedding(x, self.weight)
        return self.op(self.pad(x), self.weight, self.bias)


class FloatAdd(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b


def four_bit_buffers(twin_model: nn.Module) -> dict[str, bool]:
    """Names of the opset-21 code and zero-point buffers that hold 4-bit values (name ->
    signed), to be stored as ONNX INT4/UINT4 (torch has no 4-bit dtype to export them in)."""
    out: dict[str, bool] = {}
    for name, module in twin_model.named_modules():
        if isinstance(module, NBitsLinearTwin) and module.standard and module.bits == 4:
            signed = module.codes_t.dtype == torch.int8
            out[f"{name}.codes_t"] = signed
            if module.zp_t is not None:
                out[f"{name}.zp_t"] = signed
    return out


def narrow_initializers(model: Any, four_bit: dict[str, bool]) -> None:
    """Store the ``four_bit`` initializers of an onnx_ir ``model`` as INT4/UINT4 (two
    codes a byte, as DequantizeLinear with block_size takes them since opset 21)."""
    import ml_dtypes
    import onnx_ir as ir

    for name, value in model.graph.initializers.items():
        signed = four_bit.get(name)
        if signed is None or value.const_value is None:
            continue
        codes = value.const_value.numpy()
        narrow = codes.astype(ml_dtypes.int4 if signed else ml_dtypes.uint4)
        value.const_value = ir.Tensor(narrow, name=name)
        value.dtype = ir.DataType.INT4 if signed else ir.DataType.UINT4


def make_twin(module: KernelModule, target: str, opset: int) -> nn.Module:
    """The twin of one lowbit module, or ``CannotExpressError`` saying why there is none."""
    mode = module.spec.mode
    if isinstance(module, QuantAdd):
        return AddTwin(module, target)
    if isinstance(module, QuantEmbedding):
        return EmbeddingTwin(module)
    if not isinstance(module, QuantLinear | QuantConv2d):
        raise CannotExpressError(f"{type(module).__name__} has no ONNX form")
    if mode == "static":
        return StaticTwin(module, target)
    if mode == "dynamic":
        return (
            DynamicConvTwin(module)
            if isinstance(module, QuantConv2d)
            else DynamicLinearTwin(module, target)
        )
    if isinstance(module, QuantConv2d):
        raise CannotExpressError("weight-only Conv2d has no ONNX integer form")
    return NBitsLinearTwin(module, opset)


def float_twin(module: KernelModule) -> nn.Module:
    """A skipped layer: float op on lowbit's dequantized weight (a QuantAdd: plain add)."""
    if isinstance(module, QuantAdd):
        return FloatAdd()
    relu = module.spec.relu
    twin = FloatTwin(module)
    return nn.Sequential(twin, nn.ReLU()) if relu else twin


def _skipped(name: str, skip: Sequence[str]) -> bool:
    return any(name == p or fnmatch.fnmatchcase(name, p) for p in skip)


def export_copy(
    model: nn.Module, *, target: str, opset: int, skip: Sequence[str] = ()
) -> tuple[nn.Module, dict[str, str]]:
    """A copy of ``model`` with every lowbit module replaced by its twin, and the layers left
    in float (name -> reason: lowbit's plan, plus the skipped ones).

    Raises:
        UnsupportedFormatError: layers the exporter cannot express, all named at once, with
            the ``skip=`` that leaves them in float.
    """
    twins: dict[int, nn.Module] = {}
    floats = dict(getattr(model, "lowbit_float_layers", None) or {})
    problems: dict[str, str] = {}
    for name, module in model.named_modules():
        if not isinstance(module, KernelModule):
            continue
        if _skipped(name, skip):
            twins[id(module)] = float_twin(module)
            floats[name] = "skipped for the ONNX export (skip=)"
            continue
        try:
            twins[id(module)] = make_twin(module, target, opset)
        except CannotExpressError as exc:
            problems[name] = str(exc)
    if problems:
        what = "; ".join(f"{name} ({why})" for name, why in problems.items())
        raise UnsupportedFormatError(
            f"ONNX cannot express {len(problems)} layer(s): {what}. Pass "
            f"skip={tuple(problems)!r} to export_onnx (lowbit export: --skip NAME) to leave "
            "them in float (lowbit's dequantized weights), or quantize them with an int8 or "
            "int4/int8 weight-only preset"
        )
    # deepcopy with the twins pre-placed in its memo: every other module is copied, the
    # lowbit modules are replaced, and ``model`` itself is untouched.
    memo: dict[int, Any] = dict(twins)
    twin_model = copy.deepcopy(model, memo)
    return twin_model.eval(), floats
