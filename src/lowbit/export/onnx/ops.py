"""The quantized operations of an export twin (twins.py), as torch custom ops that torch's
exporter hands to the ONNX functions below (its ``custom_translation_table``).

Each op has an eager implementation with lowbit's arithmetic (formats/affine.py, the
reference kernels), a fake implementation for ``torch.export`` and one ONNX function that
writes the nodes the runtimes fuse into integer kernels:

- ``fake_quant``: QuantizeLinear + DequantizeLinear per tensor (static activations);
- ``dequantize``: DequantizeLinear of stored codes (weights per channel, int32 biases,
  and opset 21's blocked weights with ``block_size``);
- ``dynamic_linear``: DynamicQuantizeLinear + MatMulInteger + Cast + Mul (+ Add), the
  pattern ORT fuses into DynamicQuantizeMatMul / MatMulIntegerToFloat;
- ``per_token_linear``: lowbit's per-token int8 activations (a scale and zero point per
  row) from ReduceMin/ReduceMax, Div/Round/Clip and MatMulInteger, with the zero point's
  share removed exactly as kernels/int8.py does;
- ``dynamic_fake_quant``: DynamicQuantizeLinear + DequantizeLinear (dynamic Conv2d);
- ``matmul_nbits``: com.microsoft MatMulNBits (weight-only int2/4/8 Linear);
- ``gather_rows``: an int8-per-row embedding table as Gather of codes and scales.

Specs: https://onnx.ai/onnx/operators/ (QuantizeLinear, DequantizeLinear, MatMulInteger,
DynamicQuantizeLinear) and onnxruntime/docs/ContribOperators.md (MatMulNBits).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

NAMESPACE = "lowbit_onnx"


# ---------------------------------------------------------------- eager + fake (torch side)
@torch.library.custom_op(f"{NAMESPACE}::fake_quant", mutates_args=())
def fake_quant(x: torch.Tensor, scale: float, zero_point: int, signed: bool) -> torch.Tensor:
    """x' = s·(clamp(round(x/s) + z, qmin, qmax) − z), uint8 or int8 codes (half-even)."""
    lo, hi = (-128, 127) if signed else (0, 255)
    return (torch.clamp(torch.round(x / scale) + zero_point, lo, hi) - zero_point) * scale


@fake_quant.register_fake
def _(x: torch.Tensor, scale: float, zero_point: int, signed: bool) -> torch.Tensor:
    return torch.empty_like(x)


def _expand(param: torch.Tensor, codes: torch.Tensor, axis: int, block_size: int) -> torch.Tensor:
    """A per-tensor, per-axis or blocked parameter broadcast to the shape of ``codes``."""
    if param.dim() == 0:
        return param
    if block_size:
        return param.repeat_interleave(block_size, dim=axis).narrow(axis, 0, codes.shape[axis])
    shape = [1] * codes.dim()
    shape[axis] = -1
    return param.reshape(shape)


@torch.library.custom_op(f"{NAMESPACE}::dequantize", mutates_args=())
def dequantize(
    codes: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor | None,
    axis: int,
    block_size: int,
) -> torch.Tensor:
    """(codes − zero_point)·scale, parameters per tensor, along ``axis`` or in blocks of
    ``block_size`` along ``axis`` (0: not blocked)."""
    values = codes.to(torch.float32)
    if zero_point is not None:
        values = values - _expand(zero_point.to(torch.float32), codes, axis, block_size)
    return values * _expand(scale.to(torch.float32), codes, axis, block_size)


@dequantize.register_fake
def _(codes, scale, zero_point, axis, block_size):
    return torch.empty(codes.shape, dtype=torch.float32, device=codes.device)


def _dynamic_uint8(x: torch.Tensor) -> torch.Tensor:
    """DynamicQuantizeLinear's uint8 fake quantization: range widened to hold 0, s = range
    / 255, z = round(−min / s) (fbgemm's linear_dynamic and lowbit's reference agree)."""
    lo, hi = x.min().clamp(max=0), x.max().clamp(min=0)
    scale = torch.where(hi > lo, (hi - lo) / 255, torch.ones_like(hi))
    zp = torch.clamp(torch.round(-lo / scale), 0, 255)
    return (torch.clamp(torch.round(x / scale) + zp, 0, 255) - zp) * scale


def _linear_out(y: torch.Tensor, bias: torch.Tensor | None, relu: bool) -> torch.Tensor:
    y = y if bias is None else y + bias
    return torch.relu(y) if relu else y


@torch.library.custom_op(f"{NAMESPACE}::dynamic_linear", mutates_args=())
def dynamic_linear(
    x: torch.Tensor,
    weight_t: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None,
    relu: bool,
) -> torch.Tensor:
    """y = fq_uint8(x) @ (W_t·s_w) + b: per-batch uint8 activations, int8 per-channel W."""
    w = weight_t.to(torch.float32) * weight_scale
    return _linear_out(_dynamic_uint8(x) @ w, bias, relu)


@torch.library.custom_op(f"{NAMESPACE}::per_token_linear", mutates_args=())
def per_token_linear(
    x: torch.Tensor,
    weight_t: torch.Tensor,
    weight_scale: torch.Tensor,
    col_sum: torch.Tensor,
    bias: torch.Tensor | None,
    relu: bool,
    zero_point: bool,
    portable: bool,
) -> torch.Tensor:
    """y = fq_int8_per_row(x) @ (W_t·s_w) + b (kernels/reference.token_qparams' numbers);
    ``portable`` only changes the ONNX form (see per_token_linear_onnx)."""
    from lowbit.formats.affine import fake_quantize
    from lowbit.kernels.reference import token_qparams

    rows = x.reshape(-1, x.shape[-1])
    xq = fake_quantize(rows, token_qparams(rows, zero_point))
    w = weight_t.to(torch.float32) * weight_scale
    return _linear_out(xq @ w, bias, relu).reshape(*x.shape[:-1], w.shape[1])


@torch.library.custom_op(f"{NAMESPACE}::dynamic_fake_quant", mutates_args=())
def dynamic_fake_quant(x: torch.Tensor) -> torch.Tensor:
    """DynamicQuantizeLinear then DequantizeLinear."""
    return _dynamic_uint8(x)


def unpack_nbits(packed: torch.Tensor, bits: int, k: int) -> torch.Tensor:
    """MatMulNBits' blocks [N, blocks, blob] as unsigned codes [N, K] (element j of a byte
    in its bits j·b .. j·b + b − 1, low bits first)."""
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=packed.device)
    codes = (packed.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)
    return codes.reshape(packed.shape[0], -1)[:, :k]


@torch.library.custom_op(f"{NAMESPACE}::matmul_nbits", mutates_args=())
def matmul_nbits(
    x: torch.Tensor,
    packed: torch.Tensor,
    scales: torch.Tensor,
    zero_points: torch.Tensor | None,
    k: int,
    bits: int,
    block_size: int,
) -> torch.Tensor:
    """y = x @ W^T with W = (u − z)·s per block of ``block_size`` along K (z = 2^(bits−1)
    when ``zero_points`` is None, float zero points as given)."""
    codes = unpack_nbits(packed, bits, k)
    zp = torch.full_like(scales, 1 << (bits - 1)) if zero_points is None else zero_points
    w = dequantize(codes, scales, zp.to(torch.float32), 1, block_size)
    return F.linear(x, w.to(x.dtype))


@matmul_nbits.register_fake
def _(x, packed, scales, zero_points, k, bits, block_size):
    return x.new_empty((*x.shape[:-1], packed.shape[0]))


@dynamic_linear.register_fake
def _(x, weight_t, weight_scale, bias, relu):
    return x.new_empty((*x.shape[:-1], weight_t.shape[1]))


@per_token_linear.register_fake
def _(x, weight_t, weight_scale, col_sum, bias, relu, zero_point, portable):
    return x.new_empty((*x.shape[:-1], weight_t.shape[1]))


@dynamic_fake_quant.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


@torch.library.custom_op(f"{NAMESPACE}::gather_rows", mutates_args=())
def gather_rows(ids: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Rows ``ids`` of the table codes·scale (one scale per row)."""
    return codes[ids].to(torch.float32) * scale.reshape(-1)[ids].unsqueeze(-1)


@gather_rows.register_fake
def _(ids: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return torch.empty((*ids.shape, codes.shape[1]), dtype=torch.float32)


# ---------------------------------------------------------------- ONNX functions
def _matmul_nbits_schema() -> Any:
    """The part of com.microsoft MatMulNBits' schema lowbit writes (the onnx package has no
    contrib schemas; onnxruntime/docs/ContribOperators.md#com.microsoft.MatMulNBits)."""
    from onnx.defs import OpSchema

    param = OpSchema.FormalParameter
    optional = OpSchema.FormalParameterOption.Optional
    attr = OpSchema.AttrType.INT
    return OpSchema(
        "MatMulNBits",
        "com.microsoft",
        1,
        inputs=[
            param("A", "T1"),
            param("B", "T2"),
            param("scales", "T1"),
            param("zero_points", "T3", param_option=optional),
        ],
        outputs=[param("Y", "T1")],
        type_constraints=[
            ("T1", ["tensor(float)", "tensor(float16)"], "activations and scales"),
            ("T2", ["tensor(uint8)"], "packed weight blocks"),
            ("T3", ["tensor(uint8)", "tensor(float)", "tensor(float16)"], "zero points"),
        ],
        attributes=[
            OpSchema.Attribute(name, attr, name) for name in ("K", "N", "bits", "block_size")
        ],
    )


def translation_table() -> dict[Any, Any]:
    """torch custom op -> ONNX function (onnxscript, traced), for
    ``torch.onnx.export(custom_translation_table=)``."""
    import onnxscript
    from onnx import helper, numpy_helper
    from onnxscript import opset18 as op

    msft = onnxscript.values.Opset("com.microsoft", 1)
    matmul_nbits_op = onnxscript.values.Op(msft, "MatMulNBits", _matmul_nbits_schema())

    def const(value: Any, dtype: Any) -> Any:
        return op.Constant(value=numpy_helper.from_array(np.asarray(value, dtype=dtype)))

    def ints(*values: int) -> Any:
        return const(list(values), np.int64)

    def fake_quant_onnx(x: Any, scale: float, zero_point: int, signed: bool) -> Any:
        s = const(scale, np.float32)
        z = const(zero_point, np.int8 if signed else np.uint8)
        return op.DequantizeLinear(op.QuantizeLinear(x, s, z), s, z)

    def dequantize_onnx(codes: Any, scale: Any, zero_point: Any, axis: int, block_size: int) -> Any:
        if block_size:
            # Blocked DequantizeLinear is opset 21 (https://onnx.ai/onnx/operators/
            # onnx__DequantizeLinear.html); the graph is written with opset >= 21 then.
            from onnxscript import opset21

            return opset21.DequantizeLinear(
                codes, scale, zero_point, axis=axis, block_size=block_size
            )
        return op.DequantizeLinear(codes, scale, zero_point, axis=axis)

    def finish(y: Any, bias: Any, relu: bool) -> Any:
        y = y if bias is None else op.Add(y, bias)
        return op.Relu(y) if relu else y

    def dynamic_linear_onnx(x: Any, weight_t: Any, weight_scale: Any, bias: Any, relu: bool):
        # ORT fuses this chain into DynamicQuantizeMatMul (onnxruntime/core/optimizer/
        # matmul_integer_to_float.cc, dynamic_quantize_matmul_fusion.cc).
        xq, xs, xz = op.DynamicQuantizeLinear(x)
        acc = op.MatMulInteger(xq, weight_t, xz)
        y = op.Mul(op.Cast(acc, to=helper.TensorProto.FLOAT), op.Mul(xs, weight_scale))
        return finish(y, bias, relu)

    def per_token_linear_onnx(
        x: Any, weight_t: Any, weight_scale: Any, col_sum: Any, bias: Any, relu: bool,
        zero_point: bool, portable: bool,
    ) -> Any:  # fmt: skip
        # lowbit's int8 codes q per row are held as uint8 u = q + 128 (zero point z + 128):
        # MatMulInteger's u8 x s8 form, the one every ORT CPU build runs.
        rows = op.Reshape(x, op.Concat(ints(-1), op.Shape(x, start=-1), axis=0))
        if zero_point:
            lo = op.Min(op.ReduceMin(rows, ints(1), keepdims=0), const(0.0, np.float32))
            hi = op.Max(op.ReduceMax(rows, ints(1), keepdims=0), const(0.0, np.float32))
            scale = op.Div(op.Sub(hi, lo), const(255.0, np.float32))
        else:
            # max |x| as max(max x, −min x): two reads, no |x| tensor written
            bound = op.Max(
                op.ReduceMax(rows, ints(1), keepdims=0),
                op.Neg(op.ReduceMin(rows, ints(1), keepdims=0)),
            )
            scale = op.Div(bound, const(127.0, np.float32))
        scale = op.Where(op.Greater(scale, const(0.0, np.float32)), scale, const(1.0, np.float32))
        if zero_point:  # z = clamp(qmin − round(lo / s)) as formats/affine.choose_qparams
            z = op.Clip(op.Sub(const(-128.0, np.float32), op.Round(op.Div(lo, scale))),
                        const(-128.0, np.float32), const(127.0, np.float32))  # fmt: skip
            zu = op.Add(z, const(128.0, np.float32))
        s_col = op.Unsqueeze(scale, ints(1))
        if portable:
            # u = clamp(round(x / s) + z, 0, 255) written out (Div, Round half-even, as
            # formats/affine.quantize): OpenVINO 2026.4 cannot load a QuantizeLinear with a
            # run-time per-axis scale (its FakeQuantize shape check fails on dynamic rows).
            zu_col = op.Unsqueeze(zu, ints(1)) if zero_point else const(128.0, np.float32)
            q = op.Cast(
                op.Clip(op.Add(op.Round(op.Div(rows, s_col)), zu_col),
                        const(0.0, np.float32), const(255.0, np.float32)),
                to=helper.TensorProto.UINT8,
            )  # fmt: skip
        else:  # the same numbers in one op, ~5x faster in ORT than the five above
            zu8 = (
                op.Cast(zu, to=helper.TensorProto.UINT8)
                if zero_point
                else op.Expand(const(128, np.uint8), op.Shape(scale))
            )
            q = op.QuantizeLinear(rows, scale, zu8, axis=0)
        # MatMulInteger -> Cast -> Mul(Mul(s_row, s_w)) is the chain ORT fuses into one
        # MatMulIntegerToFloat (per-row A scale, per-column B scales on the int32 result;
        # onnxruntime/core/optimizer/matmul_integer_to_float.cc).
        w_scale_row = op.Unsqueeze(weight_scale, ints(0))
        if zero_point:
            acc = op.MatMulInteger(q, weight_t)
        else:  # every row's zero point is 128: a scalar zero point, nothing to correct
            acc = op.MatMulInteger(q, weight_t, const(128, np.uint8))
        y = op.Mul(op.Cast(acc, to=helper.TensorProto.FLOAT), op.Mul(s_col, w_scale_row))
        if zero_point:
            # ORT's MatMulInteger takes a scalar A zero point only: the per-row zero points'
            # term −(s·z) ⊗ (colsum·s_w), and the bias, added to y by one Gemm of rank 1 or 2
            # ([s·z, 1] @ [−colsum·s_w; bias] + y).
            neg_c = op.Neg(op.Mul(op.Cast(col_sum, to=helper.TensorProto.FLOAT), w_scale_row))
            sz = op.Unsqueeze(op.Mul(scale, zu), ints(1))
            if bias is not None:
                sz = op.Concat(sz, op.Expand(const([[1.0]], np.float32), op.Shape(sz)), axis=1)
                neg_c = op.Concat(neg_c, op.Unsqueeze(bias, ints(0)), axis=0)
            y = op.Gemm(sz, neg_c, y)
        elif bias is not None:
            # Sum, not Add: ORT fuses an Add of a constant into MatMulIntegerToFloat, whose
            # kernel adds it before the per-row A scale (measured wrong in onnxruntime 1.32).
            y = op.Sum(y, bias)
        y = op.Relu(y) if relu else y
        out_shape = op.Concat(op.Shape(x, end=-1), op.Shape(weight_t, start=1), axis=0)
        return op.Reshape(y, out_shape)

    def dynamic_fake_quant_onnx(x: Any) -> Any:
        xq, xs, xz = op.DynamicQuantizeLinear(x)
        return op.DequantizeLinear(xq, xs, xz)

    def matmul_nbits_onnx(
        x: Any, packed: Any, scales: Any, zero_points: Any, k: int, bits: int, block_size: int
    ) -> Any:
        n = int(packed.shape[0])
        inputs = (x, packed, scales) if zero_points is None else (x, packed, scales, zero_points)
        return matmul_nbits_op(*inputs, K=k, N=n, bits=bits, block_size=block_size)

    def gather_rows_onnx(ids: Any, codes: Any, scale: Any) -> Any:
        rows = op.Cast(op.Gather(codes, ids, axis=0), to=helper.TensorProto.FLOAT)
        return op.Mul(rows, op.Unsqueeze(op.Gather(op.Reshape(scale, ints(-1)), ids), ints(-1)))

    ops = torch.ops.lowbit_onnx
    return {
        ops.fake_quant.default: fake_quant_onnx,
        ops.dequantize.default: dequantize_onnx,
        ops.dynamic_linear.default: dynamic_linear_onnx,
        ops.per_token_linear.default: per_token_linear_onnx,
        ops.dynamic_fake_quant.default: dynamic_fake_quant_onnx,
        ops.matmul_nbits.default: matmul_nbits_onnx,
        ops.gather_rows.default: gather_rows_onnx,
    }
