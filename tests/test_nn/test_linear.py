"""QuantLinear: kernel choice, from_float, state round trip, explain."""

from __future__ import annotations

import json

import pytest
import torch

from lowbit.algorithms import rtn_tensor
from lowbit.errors import InvalidInputError, UnsupportedFormatError
from lowbit.formats.granularity import PerGroup
from lowbit.formats.qtypes import NF4, IntType
from lowbit.formats.weight_format import WeightFormat
from lowbit.kernels import REFERENCE_NAME, explain
from lowbit.nn import QuantConv2d, QuantLinear
from lowbit_testkit.kernel_helpers import int8_weight, minmax_qparams

WEIGHTS = {
    "int8": lambda: int8_weight(32, 64),
    "int4-g32": lambda: rtn_tensor(
        torch.randn(32, 64), WeightFormat(IntType(4, False), PerGroup(32), symmetric=False)
    ),
    "nf4": lambda: rtn_tensor(torch.randn(32, 64), WeightFormat(NF4, PerGroup(32))),
}


def static_kwargs(w, x: torch.Tensor) -> dict:
    return {
        "input_qparams": minmax_qparams(x),
        "output_qparams": minmax_qparams(x @ w.dequantize().T),
    }


@pytest.mark.parametrize("kind", list(WEIGHTS))
@pytest.mark.parametrize("mode", ["weight_only", "dynamic", "static"])
@pytest.mark.parametrize("relu", [False, True])
def test_state_round_trip_is_bit_identical(kind: str, mode: str, relu: bool) -> None:
    w, x = WEIGHTS[kind](), torch.randn(5, 64)
    kw = static_kwargs(w, x) if mode == "static" else {}
    m = QuantLinear(w, torch.randn(32), mode=mode, relu=relu, **kw)
    tensors, meta = m.to_state()
    meta = json.loads(json.dumps(meta))  # metadata is plain JSON, nothing pickled
    assert all(isinstance(t, torch.Tensor) for t in tensors.values())
    m2 = QuantLinear.from_state(tensors, meta)
    assert m2.kernel_name == m.kernel_name
    assert torch.equal(m(x), m2(x))


@pytest.mark.parametrize("token_zero_point", [False, True])
def test_per_token_state_round_trip(token_zero_point: bool) -> None:
    w, x = int8_weight(32, 64), torch.randn(2, 5, 64) + 1
    m = QuantLinear(w, mode="dynamic", per_token=True, token_zero_point=token_zero_point)
    tensors, meta = m.to_state()
    m2 = QuantLinear.from_state(tensors, json.loads(json.dumps(meta)))
    assert m2.spec == m.spec and torch.equal(m(x), m2(x))
    # files saved before token zero points existed load as symmetric per-token layers
    old = {**meta, "spec": {k: v for k, v in meta["spec"].items() if k != "token_zero_point"}}
    assert not QuantLinear.from_state(tensors, old).spec.token_zero_point


@pytest.mark.parametrize(
    ("mode", "per_token"), [("weight_only", False), ("dynamic", False), ("dynamic", True)]
)
def test_a_wrong_input_width_is_a_clear_error(mode: str, per_token: bool) -> None:
    m = QuantLinear(int8_weight(16, 32), mode=mode, per_token=per_token)
    with pytest.raises(InvalidInputError, match="in_features=32, got shape \\(3, 31\\)"):
        m(torch.randn(3, 31))


def test_from_float_keeps_bias_and_checks_shape() -> None:
    lin = torch.nn.Linear(64, 32)
    w = int8_weight(32, 64)
    m = QuantLinear.from_float(lin, w, mode="dynamic")
    assert torch.equal(m.bias, lin.bias.detach())
    assert (m.in_features, m.out_features) == (64, 32)
    x = torch.randn(4, 64)
    ref = QuantLinear.from_float(lin, w, mode="dynamic", kernel=REFERENCE_NAME)
    torch.testing.assert_close(m(x), ref(x), atol=1e-4, rtol=1e-4)
    with pytest.raises(InvalidInputError, match="shape"):
        QuantLinear.from_float(lin, int8_weight(16, 64))
    with pytest.raises(InvalidInputError, match="2-D"):
        QuantLinear(int8_weight(4, 2, 3, 3))


def test_from_state_refuses_another_class() -> None:
    tensors, meta = QuantLinear(int8_weight(8, 16)).to_state()
    with pytest.raises(UnsupportedFormatError, match="QuantLinear"):
        QuantConv2d.from_state(tensors, meta)
    with pytest.raises(UnsupportedFormatError, match="version"):
        QuantLinear.from_state(tensors, {**meta, "version": 99})


def test_explain_reports_each_layer() -> None:
    model = torch.nn.Sequential(
        QuantLinear(int8_weight(32, 64), mode="dynamic"),
        torch.nn.ReLU(),
        QuantLinear(rtn_tensor(torch.randn(32, 32), WeightFormat(NF4, PerGroup(32)))),
        QuantLinear(rtn_tensor(torch.randn(20, 32), WeightFormat(IntType(4, True), PerGroup(32)))),
    )
    rows = explain(model).rows
    assert [r.module for r in rows] == ["0", "2", "3"]
    assert rows[0].kernel.startswith("int8 dynamic") and rows[0].mode == "dynamic"
    assert rows[1].kernel == REFERENCE_NAME and rows[1].weight == "nf4 per_group(32)"
    assert rows[2].kernel == REFERENCE_NAME and "out_features % 16" in rows[2].why
    assert rows[2].weight == "int4 per_group(32) symmetric"
    assert model(torch.randn(2, 64)).shape == (2, 20)


def test_per_tensor_int8_weight_runs_the_int8_kernels() -> None:
    from lowbit.formats.granularity import PerTensor

    w = rtn_tensor(torch.randn(16, 32), WeightFormat(IntType(8, True), PerTensor()))
    x = torch.randn(3, 32)
    fast = QuantLinear(w, mode="dynamic")
    assert fast.kernel_name.startswith("int8 dynamic")
    ref = QuantLinear(w, mode="dynamic", kernel=REFERENCE_NAME)
    torch.testing.assert_close(fast(x), ref(x), atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------- input transforms
def transformed_linear() -> tuple[QuantLinear, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A dynamic layer with a shrinking scale and float channels 3 and 7, and its parts."""
    torch.manual_seed(0)
    w = torch.randn(32, 64)
    scale = torch.rand(64) * 0.9 + 0.1
    channels = torch.tensor([3, 7])
    scale[channels] = 0.0
    weight = int8_weight(32, 64)
    layer = QuantLinear(
        weight, torch.randn(32), mode="dynamic", input_scale=scale,
        outlier_channels=channels, outlier_weight=w[:, channels],
    )  # fmt: skip
    return layer, scale, channels, w[:, channels]


def test_an_input_transform_scales_the_quantized_input_and_adds_the_float_channels() -> None:
    from lowbit.algorithms.transforms.input_transform import dynamic_uint8

    layer, scale, channels, float_w = transformed_linear()
    x = torch.randn(2, 5, 64)
    x[..., 3] *= 40  # an outlier channel: computed in float, it does not set the range
    expected = (
        dynamic_uint8(x * scale) @ layer.weight.dequantize().T
        + layer.bias
        + x[..., channels] @ float_w.T
    )
    torch.testing.assert_close(layer(x), expected, atol=1e-4, rtol=1e-4)
    assert "input scaled, 2 float outlier channels" in repr(layer)


def test_an_input_transform_survives_the_state_round_trip() -> None:
    layer, *_ = transformed_linear()
    tensors, meta = layer.to_state()
    assert {"input_scale", "outlier_channels", "outlier_weight"} <= set(tensors)
    again = QuantLinear.from_state(tensors, json.loads(json.dumps(meta)))
    x = torch.randn(3, 64)
    assert torch.equal(layer(x), again(x))
    from lowbit.eval.size import model_nbytes  # the float channels and the scale count

    plain = QuantLinear(layer.weight, layer.bias, mode="dynamic")
    assert model_nbytes(layer) - model_nbytes(plain) == 64 * 4 + 2 * 8 + 32 * 2 * 4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "static", "input_scale": torch.ones(64)}, "for mode='dynamic' layers"),
        ({"input_scale": torch.ones(63)}, "the layer needs \\(64,\\)"),
        ({"outlier_channels": torch.tensor([1])}, "need an input_scale"),
        (
            {"input_scale": torch.ones(64), "outlier_channels": torch.tensor([1]),
             "outlier_weight": torch.ones(32, 1)},
            "whose input_scale is 0",
        ),
        (
            {"input_scale": torch.zeros(64), "outlier_channels": torch.tensor([1]),
             "outlier_weight": torch.ones(32, 2)},
            "outlier_weight must be",
        ),
        (
            {"input_scale": torch.zeros(64), "outlier_channels": torch.tensor([1, 1]),
             "outlier_weight": torch.ones(32, 2)},
            "distinct channels",
        ),
    ],
)  # fmt: skip
def test_a_wrong_input_transform_is_a_clear_error(kwargs: dict, message: str) -> None:
    kwargs = {"mode": "dynamic", **kwargs}
    if kwargs["mode"] == "static":
        kwargs.update(static_kwargs(int8_weight(32, 64), torch.randn(4, 64)))
    with pytest.raises(InvalidInputError, match=message):
        QuantLinear(int8_weight(32, 64), **kwargs)
