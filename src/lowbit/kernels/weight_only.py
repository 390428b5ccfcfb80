"""Weight-only Linear kernels on aten's packed ops, with bf16 activations.

* int8 per channel: ``aten._weight_int8pack_mm(x_bf16, codes[N, K] int8, scales_bf16[N])``.
* int4 per group: ``aten._weight_int4pack_mm_for_cpu(x_bf16, packed, group, sz)``, which
  dequantizes w = (u - 8)·scale + zero with u in [0, 15] and a FLOAT zero (tinygemm
  convention). Every IntPackedTensor form of 1 to 4 bits converts to it exactly in float32
  (w = s·q + c with c = 0, -s·z or Lmin - s·qmin; u = q + shift in [0, 15] centred on 8,
  shift = 8 - 2^(bits-1) - qtype.qmin, so zero = s·(8 - shift) + c); only the bf16 storage
  of scale/zero rounds. 3- and 2-bit weights thus run at int4 speed and take 4 bits per
  weight in memory while running (their files keep 3 and 2).

The input is cast to bf16 and the output back to the input's dtype: with fp32 activations
these ops are 3-12x slower than fp32 F.linear on CPU (measured, see /docs/decisions.md), so
bf16 is what makes them fast. Accuracy vs the float32 reference is bf16 rounding (~50 dB).

Applicability was measured on torch 2.13: int8pack needs K % 16 == 0 (other K crash or
return garbage); int4pack needs N % 16 == 0 and group size 32/64/128/256 dividing K.
"""

from __future__ import annotations

import torch

from lowbit.formats.granularity import PerAxis, PerGroup, PerTensor
from lowbit.kernels.registry import KernelEntry, LayerSpec, check_float_input
from lowbit.tensors import IntPackedTensor, QTensor

INT4_GROUPS = (32, 64, 128, 256)
ATEN = torch.ops.aten


def _common_reason(weight: QTensor | None, spec: LayerSpec, max_bits: int) -> str | None:
    if spec.mode != "weight_only":
        return f"runs mode='weight_only' only, the layer is {spec.mode!r}"
    if not isinstance(weight, IntPackedTensor):
        kind = "none" if weight is None else weight.kind
        return f"needs an integer IntPackedTensor weight, got {kind}"
    if weight.qtype.bits > max_bits:
        return f"needs codes of at most {max_bits} bits, got {weight.qtype.name}"
    if len(weight.shape) != 2:
        return f"needs a 2-D [N, K] weight, got shape {weight.shape}"
    return None


def _finish(y: torch.Tensor, state: dict, like: torch.Tensor) -> torch.Tensor:
    y = y.float()
    if state["bias"] is not None:
        y = y + state["bias"]
    if state["spec"].relu:
        y = torch.relu(y)
    return y.to(like.dtype)


def _bias(bias: torch.Tensor | None) -> torch.Tensor | None:
    return None if bias is None else bias.detach().float().contiguous()


# ---------------------------------------------------------------- int8 per channel
def _int8_applies(weight: QTensor | None, spec: LayerSpec) -> str | None:
    reason = _common_reason(weight, spec, max_bits=8)
    if reason:
        return reason
    if weight.qtype.bits != 8:
        return f"needs 8-bit codes, got {weight.qtype.name} (the int4 kernel takes 1-4 bits)"
    if not weight.qtype.signed or weight.form != "symmetric":
        return f"needs symmetric int8 (no zero point), got {weight.qtype.name} {weight.form}"
    g = weight.granularity
    if not (isinstance(g, PerTensor) or (isinstance(g, PerAxis) and g.axis % 2 == 0)):
        return "needs per-output-channel (per_axis(0)) or per-tensor scales"
    if weight.shape[1] % 16:
        return f"needs in_features % 16 == 0 (aten int8pack), got {weight.shape[1]}"
    return None


def _int8_prepare(weight: IntPackedTensor, bias: torch.Tensor | None, spec: LayerSpec) -> dict:
    n = weight.shape[0]
    scales = weight.scale.float().reshape(-1).expand(n).to(torch.bfloat16).contiguous()
    return {
        "codes": weight.codes().contiguous(),
        "scales": scales,
        "bias": _bias(bias),
        "spec": spec,
    }


def _int8_run(state: dict, x: torch.Tensor) -> torch.Tensor:
    check_float_input(x, "input")
    x2 = x.reshape(-1, x.shape[-1]).to(torch.bfloat16).contiguous()
    y = ATEN._weight_int8pack_mm(x2, state["codes"], state["scales"])
    return _finish(y.reshape(*x.shape[:-1], -1), state, x)


# ---------------------------------------------------------------- int4 per group
def _int4_applies(weight: QTensor | None, spec: LayerSpec) -> str | None:
    reason = _common_reason(weight, spec, max_bits=4)
    if reason:
        return reason
    n = weight.shape[0]
    g = weight.granularity
    if not isinstance(g, PerGroup) or g.axis % 2 != 1:
        return "needs per-group scales along the input dim (per_group(size, axis=-1))"
    if g.size not in INT4_GROUPS:
        return f"needs group size in {INT4_GROUPS} (aten int4pack), got {g.size}"
    if n % 16:
        return f"needs out_features % 16 == 0 (aten int4pack), got {n}"
    return None


def _int4_shift(weight: IntPackedTensor) -> int:
    """u = q + shift puts the codes of a b-bit qtype in the middle of [0, 15], around 8."""
    return 8 - 2 ** (weight.qtype.bits - 1) - weight.qtype.qmin


def int4pack_codes(weight: IntPackedTensor) -> torch.Tensor:
    """The unsigned int4pack codes u in [0, 15] (int32, [N, K]) of a 1-4-bit weight."""
    return (weight.codes().to(torch.int32) + _int4_shift(weight)).contiguous()


def int4pack_scale_zero(weight: IntPackedTensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 (scale, zero) of shape [N, K/group] with (u - 8)·scale + zero == dequantize.

    Centring the codes (``int4pack_codes``) keeps zero near the middle of each group's range,
    so its bf16 rounding stays as small relative to the step for 2 or 3 bits as for 4."""
    qp = weight.qparams
    s = qp.scale
    if qp.offset is not None:
        c = qp.offset - s * qp.qmin
    elif qp.zero_point is not None:
        c = -s * qp.zero_point.float()
    else:
        c = torch.zeros_like(s)
    return s, s * (8 - _int4_shift(weight)) + c


def _int4_prepare(weight: IntPackedTensor, bias: torch.Tensor | None, spec: LayerSpec) -> dict:
    u = int4pack_codes(weight)
    group = weight.granularity.size
    # A ragged last group (in_features not a multiple of the group, e.g. 576 with g128) is
    # padded to a whole group; the input is zero-padded to match, so the padding adds 0.
    pad = -u.shape[1] % group
    if pad:
        u = torch.nn.functional.pad(u, (0, pad), value=8)
    scale, zero = int4pack_scale_zero(weight)
    sz = torch.stack([scale.t(), zero.t()], dim=-1).to(torch.bfloat16).contiguous()
    return {
        "packed": ATEN._convert_weight_to_int4pack_for_cpu(u, 1),
        "pad": pad,
        "group": group,
        "sz": sz,
        "bias": _bias(bias),
        "spec": spec,
    }


def _int4_run(state: dict, x: torch.Tensor) -> torch.Tensor:
    check_float_input(x, "input")
    x2 = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)
    if state["pad"]:
        x2 = torch.nn.functional.pad(x2, (0, state["pad"]))
    y = ATEN._weight_int4pack_mm_for_cpu(
        x2.contiguous(), state["packed"], state["group"], state["sz"]
    )
    return _finish(y.reshape(*x.shape[:-1], -1), state, x)


WEIGHT_ONLY_ENTRIES: tuple[KernelEntry, ...] = (
    KernelEntry(
        op="linear",
        name="int4 weight-only (aten._weight_int4pack_mm_for_cpu, bf16)",
        priority=90,
        applies=_int4_applies,
        prepare=_int4_prepare,
        run=_int4_run,
        summary="bf16 activations x 1-4-bit per-group weights (tinygemm int4 layout)",
    ),
    KernelEntry(
        op="linear",
        name="int8 weight-only (aten._weight_int8pack_mm, bf16)",
        priority=80,
        applies=_int8_applies,
        prepare=_int8_prepare,
        run=_int8_run,
        summary="bf16 activations x int8 per-channel weights",
    ),
)
