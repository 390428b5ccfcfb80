"""QuantConv2d: from_float, static int8 flow with quint8 between layers, state round trip."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from lowbit.algorithms import rtn_tensor
from lowbit.errors import InvalidSpecError
from lowbit.formats.sqnr import sqnr_db
from lowbit.formats.weight_format import WeightFormat
from lowbit.kernels import REFERENCE_NAME
from lowbit.nn import QuantConv2d
from lowbit_testkit.kernel_helpers import int8_weight, minmax_qparams


def test_from_float_takes_geometry_and_matches_reference() -> None:
    conv = torch.nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=1)
    w = int8_weight(6, 4, 3, 3)
    x = torch.randn(2, 4, 9, 9)
    kw = {
        "mode": "static",
        "input_qparams": minmax_qparams(x),
        "output_qparams": minmax_qparams(F.conv2d(x, w.dequantize(), conv.bias, 2, 1)),
    }
    m = QuantConv2d.from_float(conv, w, **kw)
    assert m.spec.stride == (2, 2) and m.spec.padding == (1, 1)
    assert m.kernel_name.startswith("int8 static")
    ref = QuantConv2d.from_float(conv, w, kernel=REFERENCE_NAME, **kw)
    step = float(kw["output_qparams"].scale)
    assert float((m(x) - ref(x)).abs().max()) <= step * 1.001


PADDINGS = [
    {"padding": 1, "padding_mode": "reflect"},
    {"padding": (2, 1), "padding_mode": "replicate"},
    {"padding": 1, "padding_mode": "circular"},
    {"padding": "same"},
    {"padding": "same", "kernel_size": 4, "dilation": 2},  # odd total: one more right/bottom
    {"padding": "same", "padding_mode": "reflect"},
    {"padding": "valid"},
]


@pytest.mark.parametrize("options", PADDINGS)
def test_every_padding_of_nn_conv2d_matches_it(options: dict) -> None:
    options = dict(options)
    conv = torch.nn.Conv2d(3, 4, options.pop("kernel_size", 3), **options).eval()
    w = int8_weight(*conv.weight.shape)
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        conv.weight.copy_(w.dequantize())
        ref = conv(x)
    torch.testing.assert_close(QuantConv2d.from_float(conv, w)(x), ref)
    qp = minmax_qparams(x)
    static = QuantConv2d.from_float(
        conv, w, mode="static", input_qparams=qp, output_qparams=minmax_qparams(ref)
    )
    assert sqnr_db(ref, static(x)) > 30
    quint8 = torch.quantize_per_tensor(x, float(qp.scale), int(qp.zero_point), torch.quint8)
    torch.testing.assert_close(static(quint8), static(x))  # int8 hand-over pads alike
    tensors, meta = static.to_state()
    again = QuantConv2d.from_state(tensors, json.loads(json.dumps(meta)))
    assert torch.equal(again(x), static(x))


def test_bad_padding_options_are_refused() -> None:
    with pytest.raises(InvalidSpecError, match="padding='same'"):
        QuantConv2d(int8_weight(2, 2, 3, 3), padding="same")  # type: ignore[arg-type]
    with pytest.raises(InvalidSpecError, match="padding_mode='mirror'"):
        QuantConv2d(int8_weight(2, 2, 3, 3), padding_mode="mirror")


def _pair(kernel: str | None, x: torch.Tensor, w1, b1, w2, b2):
    h = F.relu(F.conv2d(x, w1.dequantize(), b1, 1, 1))
    y = F.conv2d(F.max_pool2d(h, 2), w2.dequantize(), b2, 1, 1)
    c1 = QuantConv2d(
        w1,
        b1,
        padding=1,
        mode="static",
        relu=False,
        input_qparams=minmax_qparams(x),
        output_qparams=minmax_qparams(F.conv2d(x, w1.dequantize(), b1, 1, 1)),
        keep_quantized_output=True,
        kernel=kernel,
    )
    c2 = QuantConv2d(
        w2, b2, padding=1, mode="static", output_qparams=minmax_qparams(y), kernel=kernel
    )
    return c1, c2, y


def test_conv_relu_maxpool_conv_keeps_quint8_between_layers() -> None:
    x = torch.randn(2, 3, 12, 12)
    w1, b1 = int8_weight(8, 3, 3, 3), torch.randn(8) * 0.1
    w2, b2 = int8_weight(4, 8, 3, 3), torch.randn(4) * 0.1
    outs = {}
    for kernel in (None, REFERENCE_NAME):
        c1, c2, y_float = _pair(kernel, x, w1, b1, w2, b2)
        h = c1(x)
        assert h.dtype == torch.quint8  # stays int8 through ReLU and max-pool
        h = F.max_pool2d(torch.relu(h), 2)
        assert h.dtype == torch.quint8
        outs[kernel] = c2(h)
        assert outs[kernel].dtype == torch.float32
    fast, ref = outs[None], outs[REFERENCE_NAME]
    # a one-step difference in layer 1 can move layer 2 by a few steps; most stay equal
    step = float(c2.spec.output_qparams.scale)
    assert float((fast - ref).abs().max()) <= 4 * step
    assert sqnr_db(ref, fast) > 30
    assert sqnr_db(y_float, fast) > 20  # and both are close to the float network


def test_state_round_trip_is_bit_identical() -> None:
    w, x = int8_weight(6, 2, 3, 3), torch.randn(1, 4, 8, 8)
    m = QuantConv2d(
        w,
        torch.randn(6),
        stride=1,
        padding=(1, 0),
        groups=2,
        mode="static",
        relu=True,
        input_qparams=minmax_qparams(x),
        output_qparams=minmax_qparams(torch.randn(10) * 3),
    )
    tensors, meta = m.to_state()
    m2 = QuantConv2d.from_state(tensors, json.loads(json.dumps(meta)))
    assert (m2.spec, m2.kernel_name) == (m.spec, m.kernel_name)
    assert torch.equal(m(x), m2(x))


@pytest.mark.parametrize("mode", ["weight_only", "dynamic"])
def test_non_static_conv_uses_reference(mode: str) -> None:
    w, x = int8_weight(4, 3, 3, 3), torch.randn(2, 3, 6, 6)
    m = QuantConv2d(w, mode=mode)
    assert m.kernel_name == REFERENCE_NAME
    if mode == "weight_only":
        torch.testing.assert_close(m(x), F.conv2d(x, w.dequantize()))


def test_keep_quantized_output_can_be_switched_after_construction() -> None:
    from lowbit.formats.granularity import PerAxis
    from lowbit.formats.qtypes import IntType
    from lowbit.kernels import activation_qparams
    from lowbit.nn import QuantConv2d

    conv = torch.nn.Conv2d(3, 4, 3)
    weight = rtn_tensor(conv.weight.detach(), WeightFormat(IntType(8, True), PerAxis(0)))
    qp = activation_qparams(0.05, 128)
    module = QuantConv2d.from_float(
        conv, weight, mode="static", input_qparams=qp, output_qparams=qp
    )
    x = torch.randn(1, 3, 6, 6)
    assert not module(x).is_quantized
    module.keep_quantized_output = True
    assert module.keep_quantized_output and module(x).is_quantized
    module.keep_quantized_output = False
    assert not module(x).is_quantized
