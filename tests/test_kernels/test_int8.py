"""int8 kernels (torch quantized engine) against the reference kernel on a grid of shapes."""

from __future__ import annotations

import pytest
import torch

from lowbit.algorithms import rtn_tensor
from lowbit.formats.affine import QParams
from lowbit.formats.sqnr import sqnr_db
from lowbit.formats.weight_format import WeightFormat
from lowbit.kernels import DEFAULT_REGISTRY, LayerSpec
from lowbit_testkit.kernel_helpers import int8_weight, minmax_qparams, run_pair

DYN = "int8 dynamic (quantized.linear_dynamic, x86/fbgemm)"
STATIC_LINEAR = "int8 static (quantized.linear, x86/fbgemm)"
STATIC_CONV = "int8 static (quantized.conv2d, x86/onednn)"
ADD = "int8 static (quantized.add)"


def assert_within_one_step(y: torch.Tensor, yr: torch.Tensor, qp: QParams) -> None:
    """Static int8 vs its fake-quant reference: both round the same real number to the
    output grid, only float summation order differs, so codes may differ by one at a
    rounding tie and nowhere by more; nearly all must be identical."""
    step = float(qp.scale)
    diff = (y.float() - yr.float()).abs()
    assert float(diff.max()) <= step * 1.001
    assert float((diff < step / 2).float().mean()) >= 0.98


@pytest.mark.parametrize("batch", [1, 3, 32])
@pytest.mark.parametrize(("k", "n"), [(64, 32), (37, 19)])
@pytest.mark.parametrize("relu", [False, True])
def test_dynamic_linear_matches_reference(batch: int, k: int, n: int, relu: bool) -> None:
    w, b = int8_weight(n, k), torch.randn(n)
    x = torch.randn(batch, k)
    spec = LayerSpec("linear", "dynamic", relu=relu)
    y, yr = run_pair(DEFAULT_REGISTRY, "linear", w, b, spec, DYN, x)
    assert y.shape == (batch, n) and y.dtype == torch.float32
    # The reference simulates the same per-batch uint8 activation quantization, so the only
    # differences are float rounding (and rare one-code ties): far above the 35 dB floor.
    assert sqnr_db(yr, y) > 35
    if relu:
        assert float(y.min()) >= 0


def test_dynamic_linear_keeps_leading_dims_and_dtype() -> None:
    w = int8_weight(16, 32)
    x = torch.randn(2, 5, 32, dtype=torch.bfloat16)
    y, yr = run_pair(DEFAULT_REGISTRY, "linear", w, None, LayerSpec("linear", "dynamic"), DYN, x)
    assert y.shape == (2, 5, 16) and y.dtype == torch.bfloat16
    assert sqnr_db(yr, y) > 35


@pytest.mark.parametrize("batch", [1, 3, 32])
@pytest.mark.parametrize(("k", "n"), [(64, 32), (37, 19)])
@pytest.mark.parametrize("relu", [False, True])
def test_static_linear_within_one_output_step(batch: int, k: int, n: int, relu: bool) -> None:
    w, b = int8_weight(n, k), torch.randn(n) * 0.1
    x = torch.randn(batch, k)
    y_float = torch.nn.functional.linear(x, w.dequantize(), b)
    in_qp, out_qp = minmax_qparams(x), minmax_qparams(y_float)
    spec = LayerSpec("linear", "static", relu=relu, input_qparams=in_qp, output_qparams=out_qp)
    y, yr = run_pair(DEFAULT_REGISTRY, "linear", w, b, spec, STATIC_LINEAR, x)
    assert y.dtype == torch.float32
    assert_within_one_step(y, yr, out_qp)


def test_static_linear_quint8_input_used_as_is_and_output_kept() -> None:
    w, x = int8_weight(24, 48), torch.randn(4, 48)
    in_qp, out_qp = minmax_qparams(x), minmax_qparams(x @ w.dequantize().T)
    # Deliberately wrong input qparams: a quint8 input must not be requantized with them.
    spec = LayerSpec(
        "linear",
        "static",
        input_qparams=minmax_qparams(x * 100),
        output_qparams=out_qp,
        keep_quantized_output=True,
    )
    x_q = torch.quantize_per_tensor(x, float(in_qp.scale), int(in_qp.zero_point), torch.quint8)
    y, yr = run_pair(DEFAULT_REGISTRY, "linear", w, None, spec, STATIC_LINEAR, x_q)
    assert y.dtype == torch.quint8 and yr.dtype == torch.quint8
    assert y.q_scale() == pytest.approx(float(out_qp.scale))
    assert y.q_zero_point() == int(out_qp.zero_point)
    assert_within_one_step(y.dequantize(), yr.dequantize(), out_qp)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize(("stride", "padding"), [(1, 0), (1, 1), (2, 1)])
@pytest.mark.parametrize("relu", [False, True])
def test_static_conv2d_within_one_output_step(
    batch: int, stride: int, padding: int, relu: bool
) -> None:
    w, b = int8_weight(8, 5, 3, 3), torch.randn(8) * 0.1
    x = torch.randn(batch, 5, 9, 11)
    y_float = torch.nn.functional.conv2d(x, w.dequantize(), b, stride, padding)
    spec = LayerSpec(
        "conv2d",
        "static",
        relu=relu,
        stride=(stride, stride),
        padding=(padding, padding),
        input_qparams=minmax_qparams(x),
        output_qparams=minmax_qparams(y_float),
    )
    y, yr = run_pair(DEFAULT_REGISTRY, "conv2d", w, b, spec, STATIC_CONV, x)
    assert y.shape == y_float.shape and y.dtype == torch.float32
    assert_within_one_step(y, yr, spec.output_qparams)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("quantized_inputs", [False, True])
def test_static_add_within_one_output_step(relu: bool, quantized_inputs: bool) -> None:
    a, b = torch.randn(2, 4, 5, 5), torch.randn(2, 4, 5, 5) * 2
    qa, qb, qo = minmax_qparams(a), minmax_qparams(b), minmax_qparams(a + b)
    if quantized_inputs:
        a = torch.quantize_per_tensor(a, float(qa.scale), int(qa.zero_point), torch.quint8)
        b = torch.quantize_per_tensor(b, float(qb.scale), int(qb.zero_point), torch.quint8)
    spec = LayerSpec(
        "add", "static", relu=relu, input_qparams=qa, other_qparams=qb, output_qparams=qo
    )
    y, yr = run_pair(DEFAULT_REGISTRY, "add", None, None, spec, ADD, a, b)
    assert y.dtype == torch.float32
    assert_within_one_step(y, yr, qo)
    if relu:
        assert float(y.min()) >= 0


def test_static_float_input_without_input_qparams_is_an_error() -> None:
    from lowbit.errors import InvalidInputError

    w = int8_weight(8, 16)
    spec = LayerSpec("linear", "static", output_qparams=minmax_qparams(torch.randn(8)))
    entry = DEFAULT_REGISTRY.get("linear", STATIC_LINEAR)
    state = entry.prepare(w, None, spec)
    with pytest.raises(InvalidInputError, match="input_qparams"):
        entry.run(state, torch.randn(2, 16))


@pytest.mark.parametrize("zero_point", [False, True])
@pytest.mark.parametrize("batch", [1, 3, 32])
@pytest.mark.parametrize("relu", [False, True])
def test_per_token_dynamic_matches_its_reference(batch: int, relu: bool, zero_point: bool) -> None:
    from lowbit.formats.granularity import PerAxis
    from lowbit.formats.qtypes import IntType
    from lowbit.kernels import REFERENCE_NAME
    from lowbit.nn import QuantLinear

    torch.manual_seed(0)
    linear = torch.nn.Linear(48, 24)
    weight = rtn_tensor(linear.weight.detach(), WeightFormat(IntType(8, True), PerAxis(0)))
    kw = dict(mode="dynamic", per_token=True, token_zero_point=zero_point, relu=relu)
    fast = QuantLinear.from_float(linear, weight, **kw)
    ref = QuantLinear.from_float(linear, weight, **kw, kernel=REFERENCE_NAME)
    assert fast.kernel_name == "int8 dynamic per-token (torch._int_mm)"
    x = torch.randn(batch, 5, 48)
    x[0, 0] *= 50  # an outlier token: per-token scales keep the other tokens precise
    x[-1, 1] = x[-1, 1].abs() + 3  # a one-sided token (as after GELU)
    out, expected = fast(x), ref(x)
    assert out.shape == (batch, 5, 24)
    assert torch.allclose(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("zero_point", [False, True])
def test_per_token_c_loops_and_torch_fallback_give_the_same_output(
    monkeypatch, zero_point: bool
) -> None:
    from lowbit.formats.granularity import PerAxis
    from lowbit.formats.qtypes import IntType
    from lowbit.kernels import native
    from lowbit.nn import QuantLinear

    torch.manual_seed(3)
    linear = torch.nn.Linear(96, 40)
    weight = rtn_tensor(linear.weight.detach(), WeightFormat(IntType(8, True), PerAxis(0)))
    layer = QuantLinear.from_float(
        linear, weight, mode="dynamic", per_token=True, token_zero_point=zero_point
    )
    x = torch.randn(4, 9, 96) * torch.logspace(-2, 2, 9).unsqueeze(1) + torch.rand(9, 1) * 3
    assert native.available()
    fast = layer(x)
    monkeypatch.setattr(native, "available", lambda: False)
    assert torch.equal(layer(x), fast)
    assert torch.equal(layer(x[:, ::2]), fast[:, ::2])  # strided rows take the same path
