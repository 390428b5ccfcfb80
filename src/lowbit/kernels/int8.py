"""int8 kernels on torch's quantized engine (FBGEMM / oneDNN through engine "x86").

Measured in /docs/decisions.md ("Kernels"): dynamic Linear via ``quantized.linear_dynamic``
with ``reduce_range=False`` is the fastest and most accurate int8 path on AVX-512 VNNI CPUs;
static Linear/Conv2d keep quint8 activations between layers (``quantized.linear``,
``quantized.conv2d``, ``quantized.add``), about as fast as torch.ao FX int8.

The weight must be int8, symmetric (zero point 0: oneDNN conv and the x86 prepack need it),
per output channel (or per tensor, expanded to per channel losslessly). It is repacked from
the IntPackedTensor's codes and scales at prepare time; the packed params are never stored.
"""

from __future__ import annotations

import torch

from lowbit.errors import InvalidInputError
from lowbit.formats.affine import quantize
from lowbit.formats.granularity import PerAxis, PerTensor
from lowbit.formats.qtypes import IntType
from lowbit.kernels import native
from lowbit.kernels.reference import to_quint8, token_qparams
from lowbit.kernels.registry import (
    KernelEntry,
    LayerSpec,
    check_activation_qparams,
    check_float_input,
    quantized_engine,
    quiet_quantized_warnings,
)
from lowbit.tensors import IntPackedTensor, QTensor

ENGINE = "x86"
Q = torch.ops.quantized
INT8 = IntType(8, True)


def int8_weight_reason(weight: QTensor | None, ndim: int) -> str | None:
    """None if ``weight`` is int8 symmetric per-channel/per-tensor of ``ndim`` dims."""
    if ENGINE not in torch.backends.quantized.supported_engines:
        return f"torch's quantized engine {ENGINE!r} is not available on this build/CPU"
    if not isinstance(weight, IntPackedTensor):
        kind = "none" if weight is None else weight.kind
        return f"needs an int8 IntPackedTensor weight, got {kind}"
    if weight.qtype != INT8:
        return f"needs int8 codes, got {weight.qtype.name}"
    if weight.form != "symmetric":
        return f"needs symmetric weights (zero point 0), got the {weight.form} form"
    if len(weight.shape) != ndim:
        return f"needs a {ndim}-D weight, got shape {weight.shape}"
    g = weight.granularity
    if not (isinstance(g, PerTensor) or (isinstance(g, PerAxis) and g.axis % ndim == 0)):
        return "needs per-output-channel (per_axis(0)) or per-tensor scales"
    return None


def qint8_weight(weight: IntPackedTensor) -> torch.Tensor:
    """The weight as a torch per-channel qint8 tensor (axis 0): same codes, same scales."""
    n = weight.shape[0]
    scale = weight.scale.to(torch.float64).reshape(-1).expand(n).contiguous()
    with quiet_quantized_warnings():
        return torch._make_per_channel_quantized_tensor(
            weight.codes().contiguous(), scale, torch.zeros(n, dtype=torch.long), 0
        )


def _bias(bias: torch.Tensor | None) -> torch.Tensor | None:
    return None if bias is None else bias.detach().float().contiguous()


# ---------------------------------------------------------------- linear, dynamic
def _dyn_applies(weight: QTensor | None, spec: LayerSpec) -> str | None:
    if spec.mode != "dynamic":
        return f"runs mode='dynamic' only, the layer is {spec.mode!r}"
    if spec.per_token:
        return "quantizes activations per batch; the layer asks for per-token scales"
    return int8_weight_reason(weight, 2)


def _per_token_applies(weight: QTensor | None, spec: LayerSpec) -> str | None:
    if spec.mode != "dynamic" or not spec.per_token:
        return "runs mode='dynamic' with per-token activation scales only"
    return int8_weight_reason(weight, 2)


def _per_token_prepare(weight: IntPackedTensor, bias: torch.Tensor | None, spec: LayerSpec):
    n = weight.shape[0]
    codes = weight.codes()
    scale = weight.scale.float().reshape(-1).expand(n).contiguous()
    return {
        "weight_t": codes.t().contiguous(),  # (K, N) int8 for _int_mm
        # sum_k w[n, k]: the zero point's share of each int32 sum, removed exactly
        "col_sum": codes.sum(dim=1, dtype=torch.int32).contiguous()
        if spec.token_zero_point
        else None,
        "scale": scale,
        "bias": None if bias is None else bias.detach().float().contiguous(),
        "spec": spec,
    }


def _per_token_run(state: dict, x: torch.Tensor) -> torch.Tensor:
    """int8 per row (token): s_m and, with ``token_zero_point``, zp_m as formats/affine.py
    (half-even), q = round(x / s) + zp, int8 x int8 -> int32 (torch._int_mm),
    y = (acc - zp_m · sum_k w) · s_m · s_w + b.

    The steps around the GEMM run as one C pass each (kernels/native.py) when built, else
    as formats/affine.py's torch ops with the same numbers, slower: as separate fresh
    tensors they cost more than the int8 GEMM itself (docs/decisions.md, "Per-token
    W8A8")."""
    check_float_input(x, "input")
    spec = state["spec"]
    col_sum = state["col_sum"]
    rows = x.reshape(-1, x.shape[-1]).float()
    if native.available() and rows.device.type == "cpu":
        if rows.stride(1) != 1:
            rows = rows.contiguous()
        q, s, zp = native.quantize_rows_int8(rows, spec.token_zero_point)
        acc = torch._int_mm(q, state["weight_t"])
        y = native.dequantize_int32_(
            acc, s, state["scale"], state["bias"], spec.relu, zero_point=zp, col_sum=col_sum
        )
    else:
        if not torch.isfinite(rows).all():
            raise InvalidInputError(
                "the input holds NaN or Inf; int8 quantization needs finite values "
                "(check the layer before this one)"
            )
        qparams = token_qparams(rows, spec.token_zero_point)
        acc = torch._int_mm(quantize(rows, qparams), state["weight_t"])
        if qparams.zero_point is not None:
            acc.sub_(qparams.zero_point.to(torch.int32).unsqueeze(1) * col_sum)
        y = acc.float().mul_(qparams.scale.unsqueeze(1)).mul_(state["scale"])
        if state["bias"] is not None:
            y.add_(state["bias"])
        if spec.relu:
            y.relu_()
    return y.reshape(*x.shape[:-1], y.shape[-1]).to(x.dtype)


def _linear_prepare(weight: IntPackedTensor, bias: torch.Tensor | None, spec: LayerSpec) -> dict:
    with quantized_engine(ENGINE), quiet_quantized_warnings():
        packed = Q.linear_prepack(qint8_weight(weight), _bias(bias))
    return {"packed": packed, "spec": spec}


def _dyn_run(state: dict, x: torch.Tensor) -> torch.Tensor:
    check_float_input(x, "input")
    spec = state["spec"]
    op = Q.linear_relu_dynamic if spec.relu else Q.linear_dynamic
    # reduce_range=False: full 8-bit activations; VNNI accumulates in int32, no saturation.
    return op(x.float(), state["packed"], False).to(x.dtype)


# ---------------------------------------------------------------- static (linear, conv2d)
def _static_reason(weight: QTensor | None, spec: LayerSpec, ndim: int) -> str | None:
    if spec.mode != "static":
        return f"runs mode='static' only, the layer is {spec.mode!r}"
    return int8_weight_reason(weight, ndim)


def _static_out(y_q: torch.Tensor, spec: LayerSpec, like: torch.Tensor) -> torch.Tensor:
    if spec.keep_quantized_output:
        return y_q
    with quiet_quantized_warnings():
        y = y_q.dequantize()
    return y if like.is_quantized else y.to(like.dtype)


def _static_linear_run(state: dict, x: torch.Tensor) -> torch.Tensor:
    spec = state["spec"]
    scale, zp = check_activation_qparams(spec.output_qparams, "output_qparams")
    op = Q.linear_relu if spec.relu else Q.linear
    with quiet_quantized_warnings():
        y_q = op(to_quint8(x, spec.input_qparams, "input"), state["packed"], scale, zp)
    return _static_out(y_q, spec, x)


def _conv_prepare(weight: IntPackedTensor, bias: torch.Tensor | None, spec: LayerSpec) -> dict:
    with quantized_engine(ENGINE), quiet_quantized_warnings():
        packed = Q.conv2d_prepack(
            qint8_weight(weight),
            _bias(bias),
            list(spec.stride),
            list(spec.padding),
            list(spec.dilation),
            spec.groups,
        )
    return {"packed": packed, "spec": spec}


def _static_conv_run(state: dict, x: torch.Tensor) -> torch.Tensor:
    spec = state["spec"]
    scale, zp = check_activation_qparams(spec.output_qparams, "output_qparams")
    if not x.is_quantized:  # oneDNN conv wants NHWC; quantize the float input in that layout
        check_float_input(x, "input")
        x_in = x.contiguous(memory_format=torch.channels_last)
    else:
        x_in = x
    op = Q.conv2d_relu if spec.relu else Q.conv2d
    with quiet_quantized_warnings():
        y_q = op(to_quint8(x_in, spec.input_qparams, "input"), state["packed"], scale, zp)
    return _static_out(y_q, spec, x)


# ---------------------------------------------------------------- add (static)
def _add_applies(weight: QTensor | None, spec: LayerSpec) -> str | None:
    if ENGINE not in torch.backends.quantized.supported_engines:
        return f"torch's quantized engine {ENGINE!r} is not available on this build/CPU"
    return None


def _add_prepare(weight: QTensor | None, bias: torch.Tensor | None, spec: LayerSpec) -> dict:
    return {"spec": spec}


def _add_run(state: dict, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    spec = state["spec"]
    scale, zp = check_activation_qparams(spec.output_qparams, "output_qparams")
    a_q = to_quint8(a, spec.input_qparams, "first input")
    b_q = to_quint8(b, spec.other_qparams, "second input")
    op = Q.add_relu if spec.relu else Q.add
    with quiet_quantized_warnings():
        y_q = op(a_q, b_q, scale, zp)  # requantizes both inputs to the output qparams
    return _static_out(y_q, spec, a)


INT8_ENTRIES: tuple[KernelEntry, ...] = (
    KernelEntry(
        op="linear",
        name="int8 dynamic per-token (torch._int_mm)",
        priority=100,
        applies=_per_token_applies,
        prepare=_per_token_prepare,
        run=_per_token_run,
        summary="int8 per-token activations x int8 per-channel weights, int32 acc",
    ),
    KernelEntry(
        op="linear",
        name="int8 dynamic (quantized.linear_dynamic, x86/fbgemm)",
        priority=100,
        applies=_dyn_applies,
        prepare=_linear_prepare,
        run=_dyn_run,
        summary="uint8 activations quantized per batch x int8 per-channel weights, int32 acc",
    ),
    KernelEntry(
        op="linear",
        name="int8 static (quantized.linear, x86/fbgemm)",
        priority=100,
        applies=lambda w, s: _static_reason(w, s, 2),
        prepare=_linear_prepare,
        run=_static_linear_run,
        summary="quint8 in (calibrated) x int8 per-channel weights -> quint8 out",
    ),
    KernelEntry(
        op="conv2d",
        name="int8 static (quantized.conv2d, x86/onednn)",
        priority=100,
        applies=lambda w, s: _static_reason(w, s, 4),
        prepare=_conv_prepare,
        run=_static_conv_run,
        summary="quint8 NHWC in x int8 per-channel weights -> quint8 out",
    ),
    KernelEntry(
        op="add",
        name="int8 static (quantized.add)",
        priority=100,
        applies=_add_applies,
        prepare=_add_prepare,
        run=_add_run,
        summary="requantize both quint8 inputs to the output qparams and add",
    ),
)
