"""lowbit's Linear and Embedding layers as ONNX nodes, holding the values lowbit chose.

Weight-only ``QuantLinear`` (IntPackedTensor) becomes com.microsoft ``MatMulNBits``, a
``QuantEmbedding`` becomes com.microsoft ``GatherBlockQuantized``; with ``opset=21`` both are
standard ``DequantizeLinear`` (blocked, ``block_size``) feeding ``MatMul`` / after ``Gather``.
Float layers stay float (MatMul on W^T, Gather).

Operator semantics are ONNX Runtime 1.32's contrib op schemas (docs/ContribOperators.md,
read from ``onnxruntime.capi.onnxruntime_pybind11_state.get_all_operator_schema()``):

- MatMulNBits: Y = A · ((B - zero_point) · scales)^T; B uint8 [N, k_blocks, blob_size],
  k_blocks = ceil(K / block_size), codes packed low bits first along K; block_size a power
  of two >= 16; bits 2, 4 or 8; scales [N, k_blocks] of A's type; zero_points either uint8
  packed like B ([N, ceil(k_blocks·bits/8)]) or unpacked of A's type ([N, k_blocks]); no
  zero_points means 2^(bits-1).
- GatherBlockQuantized: uint8 data with gather_axis 0, bits 2/4/8 packed along the last
  axis, block_size a power of two >= 16 along quantize_axis; default zero point 2^(bits-1)
  for uint8; the output has the scales' type.

Codes are written bit for bit: a b-bit code q is stored as the unsigned u = q + shift of the
4- or 8-bit storage (1-3 bit codes widen losslessly to 4, 5-7 to 8, as lowbit's int4pack
kernel does), with zero point z + shift; scales are widened to float32 (exact). Per-channel
(and per-tensor) scales are repeated over power-of-two blocks that split K, so every block
holds its row's one scale. The "offset" form (x = s·(q - qmin) + Lmin) has no integer zero
point: MatMulNBits gets the float zero point qmin + shift - Lmin/s (rounded in float32).
8-bit per-row weights can instead be written as Cast(int8 codes) + MatMul + Mul (exact, fp32
GEMM speed), because ORT's CPU 8-bit MatMulNBits is fast only with int8 inputs
(``accuracy_level`` 4; see ``int8_accuracy_level``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from lowbit.errors import UnsupportedFormatError
from lowbit.export.onnx.decoder_builder import MS_DOMAIN, GraphBuilder
from lowbit.formats.granularity import PerAxis, PerGroup, PerTensor
from lowbit.tensors import IntPackedTensor, QTensor


@dataclass(frozen=True)
class Blocked:
    """A [N, K] IntPackedTensor as unsigned codes in blocks along K.

    Attributes:
        u: uint8 [N, K] codes, u = q + shift, in [0, 2^bits).
        bits: storage bits, 4 or 8.
        block: block size along K (the last block may be ragged).
        scale: float32 [N, k_blocks].
        zero: None (2^(bits-1)), uint8 [N, k_blocks] codes, or float32 [N, k_blocks].
        signed_q: int8 [N, K] codes q when the form is symmetric with shift 2^(bits-1)
            (standard DequantizeLinear writes them as int4/int8 without zero point).
    """

    u: np.ndarray
    bits: int
    block: int
    scale: np.ndarray
    zero: np.ndarray | None
    signed_q: np.ndarray | None

    @property
    def k_blocks(self) -> int:
        return self.scale.shape[1]


def _pow2_block(k: int) -> int:
    """The largest power of two >= 16 that divides ``k``, else the smallest >= k (one
    ragged block): one row's single scale repeated over whole blocks."""
    best, b = 0, 16
    while b <= k:
        if k % b == 0:
            best = b
        b *= 2
    return best or max(16, 1 << (k - 1).bit_length())


def blocked(layer: str, weight: QTensor, *, pow2: bool) -> Blocked:
    """``weight`` ([N, K] IntPackedTensor) as ``Blocked``; ``pow2``: MatMulNBits /
    GatherBlockQuantized need power-of-two blocks >= 16 (standard DequantizeLinear does not).

    Raises UnsupportedFormatError naming ``layer`` for other tensor kinds and layouts."""
    if not isinstance(weight, IntPackedTensor) or len(weight.shape) != 2:
        kind = getattr(weight, "kind", type(weight).__name__)
        raise UnsupportedFormatError(
            f"layer {layer}: weight kind {kind!r} has no ONNX weight-only form (MatMulNBits "
            "takes integer codes with scales); quantize it with an integer preset such as "
            "w4a16-g128, or keep it float (Recipe skip)"
        )
    n, k = weight.shape
    qp = weight.qparams
    bits = 4 if weight.qtype.bits <= 4 else 8
    shift = 2 ** (bits - 1) if weight.qtype.qmin < 0 else 0
    q = weight.codes().to(torch.int16)
    u = (q + shift).to(torch.uint8).numpy()
    gran = weight.granularity
    if isinstance(gran, PerGroup):
        if gran.axis % 2 != 1:
            raise UnsupportedFormatError(
                f"layer {layer}: groups along axis {gran.axis} (output channels); ONNX "
                "weight-only ops group along the input dimension: quantize with groups on the "
                "last axis"
            )
        block, repeat = gran.size, 1
        if pow2 and (block < 16 or block & (block - 1)):
            raise UnsupportedFormatError(
                f"layer {layer}: group size {block} is not a power of two >= 16, which "
                "MatMulNBits/GatherBlockQuantized need; export with opset=21 (standard "
                "DequantizeLinear takes any block size) or quantize with -g32/-g64/-g128"
            )
    elif isinstance(gran, (PerAxis, PerTensor)):
        if isinstance(gran, PerAxis) and gran.axis % 2 != 0:
            raise UnsupportedFormatError(
                f"layer {layer}: one scale per input column (axis {gran.axis}) has no "
                "MatMulNBits form; quantize per output channel or per group"
            )
        block = _pow2_block(k) if pow2 else k
        repeat = -(-k // block)
    else:  # pragma: no cover - Granularity is closed
        raise UnsupportedFormatError(f"layer {layer}: unknown granularity {gran!r}")

    def per_block(t: torch.Tensor) -> torch.Tensor:
        """A scale-shaped parameter as [N, k_blocks] (per-row values repeated)."""
        t = t.reshape(1, 1) if t.dim() == 0 else t.reshape(n, -1)
        return t.expand(n, -1).repeat_interleave(repeat, dim=1).contiguous()

    scale = per_block(qp.scale.float())
    zero: np.ndarray | None = None
    if qp.zero_point is not None:
        zero = (per_block(qp.zero_point) + shift).to(torch.uint8).numpy()
    elif qp.offset is not None:
        offset = per_block(qp.offset.float())
        zero = (qp.qmin + shift - offset / scale).float().numpy()
    elif shift != 2 ** (bits - 1):
        zero = np.full(tuple(scale.shape), shift, dtype=np.uint8)
    signed_q = q.to(torch.int8).numpy() if zero is None else None
    return Blocked(u, bits, block, scale.numpy(), zero, signed_q)


def _pack(u: np.ndarray, bits: int) -> np.ndarray:
    """Pack uint8 codes [rows, L] low bits first along the last axis (L·bits/8 bytes)."""
    if bits == 8:
        return u
    per = 8 // bits
    u = u.reshape(u.shape[0], -1, per)
    out = np.zeros(u.shape[:2], dtype=np.uint8)
    for i in range(per):
        out |= (u[:, :, i] << (bits * i)).astype(np.uint8)
    return out


def _pad_to(u: np.ndarray, length: int, fill: np.ndarray) -> np.ndarray:
    if u.shape[1] == length:
        return u
    pad = np.broadcast_to(fill.reshape(-1, 1), (u.shape[0], length - u.shape[1]))
    return np.concatenate([u, pad.astype(np.uint8)], axis=1)


def _fill_code(w: Blocked) -> np.ndarray:
    """Per row, the code of 0 in the last block (padding contributes nothing)."""
    if w.zero is None:
        return np.full(w.u.shape[0], 2 ** (w.bits - 1), dtype=np.uint8)
    last = w.zero[:, -1]
    return np.clip(np.rint(last), 0, 2**w.bits - 1).astype(np.uint8)


def _packed_zero(w: Blocked) -> np.ndarray | None:
    if w.zero is None or w.zero.dtype == np.float32:
        return w.zero
    per = 8 // w.bits
    z = _pad_to(w.zero, -(-w.k_blocks // per) * per, np.zeros(w.u.shape[0], np.uint8))
    return _pack(z, w.bits)


def matmul_nbits(g: GraphBuilder, x: str, w: Blocked, prefix: str) -> str:
    """com.microsoft MatMulNBits of ``x`` [..., K] with ``w`` -> [..., N]."""
    n, k = w.u.shape
    u = _pad_to(w.u, w.k_blocks * w.block, _fill_code(w))
    packed = _pack(u, w.bits).reshape(n, w.k_blocks, w.block * w.bits // 8)
    inputs = [x, g.const(f"{prefix}.qweight", packed), g.const(f"{prefix}.scales", w.scale)]
    zero = _packed_zero(w)
    if zero is not None:
        inputs.append(g.const(f"{prefix}.qzeros", zero))
    return g.op(
        "MatMulNBits", inputs, prefix, domain=MS_DOMAIN, K=k, N=n, bits=w.bits, block_size=w.block
    )


def _dq_codes(layer: str, w: Blocked) -> tuple[np.ndarray, np.ndarray | None]:
    """Codes and integer zero point for standard DequantizeLinear (int4/uint4/int8/uint8)."""
    import ml_dtypes

    if w.zero is not None and w.zero.dtype == np.float32:
        raise UnsupportedFormatError(
            f"layer {layer}: the offset form (x = s·(q - qmin) + Lmin) has no integer zero "
            "point, which DequantizeLinear needs; export without opset=21 (MatMulNBits takes "
            "float zero points) or quantize with the zero-point form (-asym)"
        )
    if w.zero is None:
        kind = ml_dtypes.int4 if w.bits == 4 else np.int8
        return w.signed_q.astype(kind), None
    kind = ml_dtypes.uint4 if w.bits == 4 else np.uint8
    return w.u.astype(kind), w.zero.astype(kind)


def dq_matmul(g: GraphBuilder, x: str, w: Blocked, layer: str, prefix: str) -> str:
    """Standard DequantizeLinear (blocked along K, axis 0 of W^T [K, N]) + MatMul."""
    codes, zero = _dq_codes(layer, w)
    inputs = [g.const(f"{prefix}.qweight", codes.T), g.const(f"{prefix}.scales", w.scale.T)]
    if zero is not None:
        inputs.append(g.const(f"{prefix}.qzeros", zero.T))
    weight = g.op("DequantizeLinear", inputs, f"{prefix}.weight", axis=0, block_size=w.block)
    return g.op("MatMul", [x, weight], prefix)


def gather_block_quantized(g: GraphBuilder, ids: str, w: Blocked, prefix: str) -> str:
    """com.microsoft GatherBlockQuantized: rows of the table for ``ids`` -> [..., dim]."""
    dim = w.u.shape[1]
    if dim % w.block:
        # A ragged last block along the gathered rows has no GatherBlockQuantized form.
        raise UnsupportedFormatError(
            f"layer {prefix}: embedding width {dim} is not a multiple of its block "
            f"{w.block}; export with opset=21 (Gather + DequantizeLinear)"
        )
    inputs = [g.const(f"{prefix}.qweight", _pack(w.u, w.bits)), ids]
    inputs.append(g.const(f"{prefix}.scales", w.scale))
    if w.zero is not None:
        if w.zero.dtype == np.float32:
            raise UnsupportedFormatError(
                f"layer {prefix}: GatherBlockQuantized takes integer zero points only; the "
                "offset form has none: quantize the embedding symmetric or with zero points"
            )
        inputs.append(g.const(f"{prefix}.qzeros", _packed_zero(w)))
    return g.op(
        "GatherBlockQuantized",
        inputs,
        prefix,
        domain=MS_DOMAIN,
        bits=w.bits,
        block_size=w.block,
        gather_axis=0,
        quantize_axis=1,
    )


def gather_dq(g: GraphBuilder, ids: str, w: Blocked, prefix: str) -> str:
    """Standard ops: Gather the code rows and their scales, then blocked DequantizeLinear."""
    codes, zero = _dq_codes(prefix, w)
    if w.bits == 4:  # Gather on 4-bit types is not universal: keep 8-bit storage (exact)
        codes = codes.astype(np.int8 if zero is None else np.uint8)
        zero = None if zero is None else zero.astype(np.uint8)
    x = g.op("Gather", [g.const(f"{prefix}.qweight", codes), ids], f"{prefix}.codes")
    inputs = [x, g.op("Gather", [g.const(f"{prefix}.scales", w.scale), ids], f"{prefix}.s")]
    if zero is not None:
        inputs.append(g.op("Gather", [g.const(f"{prefix}.qzeros", zero), ids], f"{prefix}.z"))
    return g.op("DequantizeLinear", inputs, prefix, axis=-1, block_size=w.block)


def cast_matmul(g: GraphBuilder, x: str, w: Blocked, prefix: str) -> str | None:
    """8-bit codes with one scale per row as (x · Cast(q)^T) · s: exact float arithmetic that
    ORT runs at fp32 GEMM speed (it folds the Cast of the int8 initializer once, so the file
    keeps int8 and memory holds fp32). None when the weight is not symmetric per row."""
    if w.bits != 8 or w.signed_q is None or not np.all(w.scale == w.scale[:, :1]):
        return None
    codes = g.const(f"{prefix}.qweight", np.ascontiguousarray(w.signed_q.T))
    weight = g.op("Cast", [codes], f"{prefix}.codes", to=g.onnx.TensorProto.FLOAT)
    y = g.op("MatMul", [x, weight], f"{prefix}.matmul")
    return g.op("Mul", [y, g.const(f"{prefix}.scales", w.scale[:, 0].copy())], prefix)


def linear(
    g: GraphBuilder, x: str, module: nn.Module, name: str, *, opset21: bool, int8_cast: bool
) -> str:
    """``module`` (nn.Linear or weight-only QuantLinear) applied to ``x``; ``int8_cast``:
    8-bit per-row weights as ``cast_matmul`` instead of MatMulNBits."""
    from lowbit.nn import QuantLinear

    if isinstance(module, QuantLinear):
        mode = module.mode
        if mode != "weight_only":
            raise UnsupportedFormatError(
                f"layer {name} quantizes its activations (mode={mode!r}); the decoder "
                "exporter writes weight-only layers: quantize with a w{bits}a16 preset"
            )
        w = blocked(name, module.weight, pow2=not opset21)
        if opset21:
            y = dq_matmul(g, x, w, name, name)
        else:
            y = (int8_cast and cast_matmul(g, x, w, name)) or matmul_nbits(g, x, w, name)
    elif isinstance(module, nn.Linear):
        weight = module.weight.detach().float().T.contiguous().numpy()
        y = g.op("MatMul", [x, g.const(f"{name}.weight", weight)], name)
    else:
        raise UnsupportedFormatError(
            f"layer {name} is a {type(module).__name__}; the decoder exporter takes nn.Linear "
            "or lowbit QuantLinear projections"
        )
    bias = getattr(module, "bias", None)
    if bias is not None:
        y = g.op("Add", [y, g.const(f"{name}.bias", bias.detach().float().numpy())], name)
    return y


def embedding(g: GraphBuilder, ids: str, module: nn.Module, name: str, *, opset21: bool) -> str:
    """``module`` (nn.Embedding or QuantEmbedding) looked up at ``ids``."""
    from lowbit.nn import QuantEmbedding

    if isinstance(module, QuantEmbedding):
        w = blocked(name, module.weight, pow2=not opset21)
        if opset21:
            return gather_dq(g, ids, w, name)
        return gather_block_quantized(g, ids, w, name)
    if isinstance(module, nn.Embedding):
        table = g.const(f"{name}.weight", module.weight.detach().float().numpy())
        return g.op("Gather", [table, ids], name)
    raise UnsupportedFormatError(
        f"layer {name} is a {type(module).__name__}; the decoder exporter takes nn.Embedding "
        "or lowbit QuantEmbedding"
    )


def int8_accuracy_level(model_proto: object, level: int) -> int:
    """Set ``accuracy_level`` on the 8-bit MatMulNBits nodes of ``model_proto``; returns how
    many. ORT 1.32's CPU provider has a fast 8-bit kernel only for accuracy_level 4 (int8
    activations, quantized per block); unset, it dequantizes the whole weight on every call
    (measured: 340 ms vs 5 ms per token for SmolLM2's tied 49152x576 head)."""
    from onnx import helper

    count = 0
    for node in model_proto.graph.node:
        attrs = {a.name: a for a in node.attribute}
        if node.op_type == "MatMulNBits" and attrs["bits"].i == 8:
            if "accuracy_level" in attrs:
                node.attribute.remove(attrs["accuracy_level"])
            node.attribute.append(helper.make_attribute("accuracy_level", level))
            count += 1
    return count
