"""Reference kernels: dequantize the weight, run the float op. The oracle of every fast kernel.

Activations are simulated exactly as the int8 kernels quantize them:

* weight_only: the float input as it is (computed in float32, cast back to its dtype);
* dynamic: fake-quantized per tensor to uint8 (zero-point form, range widened to hold 0),
  with QParams chosen from the batch, as fbgemm's ``linear_dynamic`` does;
* static: a float input is fake-quantized with ``input_qparams`` (a torch quint8 input is
  dequantized), the output is fake-quantized with ``output_qparams`` after the ReLU, and
  returned as quint8 when ``keep_quantized_output``.

These run for every weight kind (int, NF4, binary/ternary, fp8, float casts), so they are
also the real kernel for the kinds that have no fast one; explain shows that honestly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lowbit.errors import InvalidInputError
from lowbit.formats.affine import QParams, choose_qparams, fake_quantize
from lowbit.formats.granularity import PerAxis, PerTensor
from lowbit.kernels.registry import (
    INT8,
    UINT8,
    KernelEntry,
    LayerSpec,
    check_activation_qparams,
    check_float_input,
    quiet_quantized_warnings,
)
from lowbit.tensors import QTensor

REFERENCE_NAME = "reference (dequantize + float)"


def to_quint8(x: torch.Tensor, qparams: QParams | None, what: str) -> torch.Tensor:
    """``x`` as a torch quint8 tensor: used as is when already quantized, else quantized
    with ``qparams`` (InvalidInputError when there are none)."""
    check_float_input(x, what)
    if x.is_quantized:
        return x
    if qparams is None:
        raise InvalidInputError(
            f"{what} is a float tensor but the layer has no input qparams to quantize it "
            "with; pass input_qparams (from calibration) or feed a torch quint8 tensor"
        )
    scale, zp = check_activation_qparams(qparams, what)
    with quiet_quantized_warnings():
        return torch.quantize_per_tensor(x.float(), scale, zp, torch.quint8)


def token_qparams(rows: torch.Tensor, zero_point: bool) -> QParams:
    """Int8 scale (and zero point) of each row (token) of a 2-D input: symmetric restricted,
    or asymmetric in the "zero_point" form (per-token dynamic W8A8; the C loops of
    kernels/native.py compute the same numbers)."""
    if zero_point:
        return choose_qparams(rows, INT8, PerAxis(0), symmetric=False, form="zero_point")
    return choose_qparams(rows, INT8, PerAxis(0))


def simulate_input(x: torch.Tensor, spec: LayerSpec, qparams: QParams | None) -> torch.Tensor:
    """The float32 values the kernel's input stands for after activation quantization."""
    check_float_input(x, "input")
    if x.is_quantized:
        if spec.mode != "static":
            raise InvalidInputError(
                f"a torch quantized input needs mode='static', not {spec.mode!r}; "
                "dequantize it first"
            )
        with quiet_quantized_warnings():
            return x.dequantize()
    xf = x.float()
    if spec.mode == "weight_only":
        return xf
    if spec.mode == "dynamic" and spec.per_token:
        rows = xf.reshape(-1, xf.shape[-1])
        return fake_quantize(rows, token_qparams(rows, spec.token_zero_point)).reshape(xf.shape)
    if spec.mode == "dynamic":
        qparams = choose_qparams(xf, UINT8, PerTensor(), symmetric=False, form="zero_point")
    elif qparams is None:
        raise InvalidInputError(
            "a static layer got a float input but has no input qparams; pass input_qparams "
            "or feed a torch quint8 tensor"
        )
    return fake_quantize(xf, qparams)


def finish_output(y: torch.Tensor, spec: LayerSpec, like: torch.Tensor) -> torch.Tensor:
    """ReLU, static output fake-quantization, and the output dtype rule (float input dtype,
    float32 for a quantized input, quint8 when keep_quantized_output)."""
    if spec.relu:
        y = torch.relu(y)
    if spec.mode == "static":
        y = fake_quantize(y, spec.output_qparams)
        if spec.keep_quantized_output:
            return to_quint8(y, spec.output_qparams, "output")
    return y if like.is_quantized else y.to(like.dtype)


def _applies_any(weight: QTensor | None, spec: LayerSpec) -> str | None:
    if spec.op != "add" and weight is None:
        return "needs a weight"
    return None


def _prepare(weight: QTensor | None, bias: torch.Tensor | None, spec: LayerSpec) -> dict:
    w = None if weight is None else weight.dequantize(torch.float32)
    return {"weight": w, "bias": None if bias is None else bias.float(), "spec": spec}


def linear_ref(state: dict, x: torch.Tensor) -> torch.Tensor:
    """y = x' @ dequantize(W).T + b."""
    spec = state["spec"]
    y = F.linear(simulate_input(x, spec, spec.input_qparams), state["weight"], state["bias"])
    return finish_output(y, spec, x)


def conv2d_ref(state: dict, x: torch.Tensor) -> torch.Tensor:
    """y = conv2d(x', dequantize(W), b) with the layer's geometry."""
    spec = state["spec"]
    xs = simulate_input(x, spec, spec.input_qparams)
    y = F.conv2d(
        xs, state["weight"], state["bias"], spec.stride, spec.padding, spec.dilation, spec.groups
    )
    return finish_output(y, spec, x)


def add_ref(state: dict, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """y = a' + b' (each input dequantized or fake-quantized with its qparams)."""
    spec = state["spec"]
    y = simulate_input(a, spec, spec.input_qparams) + simulate_input(b, spec, spec.other_qparams)
    return finish_output(y, spec, a)


def embedding_ref(state: dict, ids: torch.Tensor) -> torch.Tensor:
    """rows of dequantize(W)."""
    return F.embedding(ids, state["weight"])


REFERENCE_ENTRIES: tuple[KernelEntry, ...] = tuple(
    KernelEntry(
        op=op,
        name=REFERENCE_NAME,
        priority=0,
        applies=_applies_any,
        prepare=_prepare,
        run=run,
        summary=summary,
        reference=True,
    )
    for op, run, summary in (
        ("linear", linear_ref, "dequantize W, float32 F.linear (activations simulated)"),
        ("conv2d", conv2d_ref, "dequantize W, float32 F.conv2d (activations simulated)"),
        ("add", add_ref, "dequantize inputs, float32 add, fake-quantize the output"),
        ("embedding", embedding_ref, "dequantize the table, float32 lookup"),
    )
)
