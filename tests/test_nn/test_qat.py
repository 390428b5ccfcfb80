"""QAT modules: eval output equals fake_quantize with qat_state()'s QParams exactly, gradients
reach the weights, small models train, activation ranges follow the EMA and freeze in eval."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lowbit.errors import LowbitError
from lowbit.formats.affine import choose_qparams, fake_quantize
from lowbit.formats.granularity import PerAxis, PerTensor
from lowbit.formats.qtypes import IntType
from lowbit.nn.qat import ActivationFakeQuant, QATConv2d, QATLinear, QATOptions, QATState
from lowbit.observers import MovingAverageMinMaxObserver

UINT8 = IntType(8, False)


def _reference(state: QATState, x: torch.Tensor) -> torch.Tensor:
    """What the int8 module built from ``state`` computes, in float: the oracle."""
    xq = fake_quantize(x, state.input_qparams)
    wq = fake_quantize(state.weight, state.weight_qparams)
    if state.op == "linear":
        y = F.linear(xq, wq, state.bias)
    else:
        conv = {k: v for k, v in state.conv.items() if k != "padding_mode"}  # "zeros" here
        y = F.conv2d(xq, wq, state.bias, **conv)
    if state.relu:
        y = F.relu(y)
    return y if state.output_qparams is None else fake_quantize(y, state.output_qparams)


def _train_steps(module: nn.Module, make_x, steps: int = 3) -> None:
    opt = torch.optim.SGD(module.parameters(), lr=0.01)
    module.train()
    for _ in range(steps):
        opt.zero_grad()
        module(make_x()).square().mean().backward()
        opt.step()


@pytest.mark.parametrize("learnable", [False, True])
@pytest.mark.parametrize("relu,quantize_output", [(False, False), (True, True)])
def test_linear_eval_output_equals_fake_quantize_with_qat_state(
    learnable: bool, relu: bool, quantize_output: bool
) -> None:
    m = QATLinear(nn.Linear(12, 5), learnable=learnable, relu=relu, quantize_output=quantize_output)
    _train_steps(m, lambda: torch.randn(16, 12) * 2 + 0.3)
    m.eval()
    x = torch.randn(3, 7, 12) * 3  # wider than training data: exercises clamping
    state = m.qat_state()
    assert state.op == "linear" and state.relu is relu and state.conv == {}
    assert (state.output_qparams is not None) is quantize_output
    assert torch.equal(m(x), _reference(state, x))


@pytest.mark.parametrize("learnable", [False, True])
def test_conv_eval_output_equals_fake_quantize_with_qat_state(learnable: bool) -> None:
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=2, groups=2)
    m = QATConv2d(conv, learnable=learnable, relu=True, quantize_output=True)
    _train_steps(m, lambda: torch.randn(2, 4, 9, 9))
    m.eval()
    state = m.qat_state()
    assert state.op == "conv2d"
    assert state.conv == {
        "stride": (2, 2),
        "padding": (1, 1),
        "padding_mode": "zeros",
        "dilation": (2, 2),
        "groups": 2,
    }
    x = torch.randn(3, 4, 9, 9)
    assert torch.equal(m(x), _reference(state, x))


def test_qat_state_qparams_have_the_int8_static_layout() -> None:
    m = QATConv2d(nn.Conv2d(3, 8, 3))
    m(torch.randn(2, 3, 6, 6))
    state = m.qat_state()
    wq, iq = state.weight_qparams, state.input_qparams
    assert wq.qtype == IntType(8, True) and wq.granularity == PerAxis(0)
    assert (wq.qmin, wq.qmax) == (-127, 127) and wq.symmetric
    assert wq.scale.shape == (8,)
    assert iq.qtype == UINT8 and iq.granularity == PerTensor() and iq.zero_point is not None
    assert iq.scale.shape == () and iq.zero_point.dtype == torch.int32
    # The weight params are PTQ's own: choose_qparams on the float weight.
    ptq = choose_qparams(state.weight, IntType(8, True), PerAxis(0))
    assert torch.equal(wq.scale, ptq.scale)
    # qat_state holds copies: training further does not change it.
    with torch.no_grad():
        m.weight.add_(1.0)
    assert not torch.equal(state.weight, m.weight)


@pytest.mark.parametrize("module", [QATLinear(nn.Linear(6, 3)), QATConv2d(nn.Conv2d(2, 3, 3))])
def test_gradients_reach_weights_and_bias(module: nn.Module) -> None:
    x = torch.randn(4, 6) if isinstance(module, QATLinear) else torch.randn(2, 2, 5, 5)
    module.train()
    module(x).square().sum().backward()
    for p in (module.weight, module.bias):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_learnable_mode_trains_scales_and_zero_point() -> None:
    m = QATLinear(nn.Linear(6, 3), learnable=True, quantize_output=True)
    m(torch.randn(32, 6) + 1).square().sum().backward()
    for p in (m.weight_scale, m.input_quant.scale, m.input_quant.zero_point):
        assert p.grad is not None and torch.isfinite(p.grad).all()
    assert m.weight_scale.grad.abs().sum() > 0 and m.input_quant.scale.grad != 0


def test_learnable_activation_initialises_from_first_batch() -> None:
    aq = ActivationFakeQuant(learnable=True)
    x = torch.randn(100) * 2 + 1
    aq(x)
    expected = choose_qparams(x, UINT8, symmetric=False, form="zero_point")
    got = aq.qparams()
    assert torch.equal(got.scale, expected.scale)
    assert torch.equal(got.zero_point, expected.zero_point)


@pytest.mark.parametrize("learnable", [False, True])
def test_tiny_regression_trains_with_fake_quant(learnable: bool) -> None:
    x = torch.rand(256, 4) * 2 - 1
    y = torch.sin(3 * x[:, :1]) + x[:, 1:2] * x[:, 2:3]
    model = nn.Sequential(
        QATLinear(nn.Linear(4, 32), relu=True, learnable=learnable),
        QATLinear(nn.Linear(32, 1), learnable=learnable),
    )
    # Adam's steps do not shrink with the gradient, so LSQ step sizes (~1e-2) need a much
    # smaller learning rate than the weights (the modules' docstrings say so).
    quant = [p for n, p in model.named_parameters() if n.endswith(("scale", "zero_point"))]
    rest = [p for n, p in model.named_parameters() if not n.endswith(("scale", "zero_point"))]
    assert bool(quant) is learnable
    opt = torch.optim.Adam([{"params": rest}, {"params": quant, "lr": 1e-4}], lr=0.01)
    losses = []
    for _ in range(150):
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]


def test_tiny_conv_classifier_trains_with_fake_quant() -> None:
    # Two classes: horizontal vs vertical bars in 6x6 images.
    imgs = torch.zeros(64, 1, 6, 6)
    labels = torch.arange(64) % 2
    for i in range(64):
        k = int(torch.randint(0, 6, ()))
        if labels[i]:
            imgs[i, 0, :, k] = 1.0
        else:
            imgs[i, 0, k, :] = 1.0
    imgs += 0.1 * torch.randn_like(imgs)
    model = nn.Sequential(
        QATConv2d(nn.Conv2d(1, 4, 3, padding=1), relu=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        QATLinear(nn.Linear(4, 2)),
    )
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    first = F.cross_entropy(model(imgs), labels).item()
    for _ in range(60):
        opt.zero_grad()
        F.cross_entropy(model(imgs), labels).backward()
        opt.step()
    model.eval()
    assert F.cross_entropy(model(imgs), labels).item() < 0.5 * first


def test_ema_range_matches_moving_average_observer_and_freezes_in_eval() -> None:
    aq = ActivationFakeQuant(averaging_constant=0.1)
    obs = MovingAverageMinMaxObserver(averaging_constant=0.1)
    for i in range(5):
        x = torch.randn(50) * (i + 1) + i
        aq(x)
        obs.observe(x)
    lo, hi = obs.clip_range(symmetric=False)
    torch.testing.assert_close(aq.min_val, lo, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(aq.max_val, hi, rtol=1e-6, atol=1e-7)
    ours = aq.qparams()
    theirs = obs.qparams(UINT8, symmetric=False, form="zero_point")
    torch.testing.assert_close(ours.scale, theirs.scale, rtol=1e-6, atol=0)
    assert int(ours.zero_point) == int(theirs.zero_point)

    frozen = (aq.min_val.clone(), aq.max_val.clone(), int(aq.num_batches))
    aq.eval()
    out = aq(torch.randn(50) * 100)  # far outside the range: clamped, and not observed
    assert (aq.min_val.item(), aq.max_val.item(), int(aq.num_batches)) == (
        frozen[0].item(),
        frozen[1].item(),
        frozen[2],
    )
    assert out.max() <= aq.max_val + ours.scale and out.min() >= aq.min_val - ours.scale


def test_learnable_parameters_are_not_reinitialised_in_eval() -> None:
    m = QATLinear(nn.Linear(3, 2), learnable=True)
    m(torch.randn(8, 3))
    scale = m.input_quant.scale.detach().clone()
    m.eval()
    m(torch.randn(8, 3) * 50)
    assert torch.equal(m.input_quant.scale.detach(), scale)


def test_state_dict_round_trip_reproduces_eval_output() -> None:
    m = QATLinear(nn.Linear(5, 4), relu=True, quantize_output=True)
    _train_steps(m, lambda: torch.randn(8, 5))
    m.eval()
    other = QATLinear(nn.Linear(5, 4), relu=True, quantize_output=True).eval()
    other.load_state_dict(m.state_dict())
    x = torch.randn(6, 5)
    assert torch.equal(other(x), m(x))


def test_wraps_the_modules_own_parameters() -> None:
    lin = nn.Linear(3, 2)
    m = QATLinear(lin)
    assert m.weight is lin.weight and m.bias is lin.bias
    no_bias = QATLinear(nn.Linear(3, 2, bias=False))
    no_bias(torch.randn(4, 3))
    assert no_bias.qat_state().bias is None


def test_low_bit_per_tensor_weights() -> None:
    m = QATLinear(nn.Linear(16, 8), weight_bits=4, per_channel=False, act_bits=4)
    m(torch.randn(10, 16))
    state = m.qat_state()
    assert state.weight_qparams.granularity == PerTensor()
    assert (state.weight_qparams.qmin, state.weight_qparams.qmax) == (-7, 7)
    assert (state.input_qparams.qmin, state.input_qparams.qmax) == (0, 15)
    assert m.fake_quantized_weight().unique().numel() <= 15


def test_eval_before_any_training_batch_is_an_error() -> None:
    m = QATLinear(nn.Linear(3, 2)).eval()
    with pytest.raises(LowbitError, match="train mode"):
        m(torch.randn(1, 3))
    with pytest.raises(LowbitError, match="train mode"):
        m.qat_state()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"weight_bits": 1},
        {"weight_bits": 9},
        {"weight_bits": True},
        {"weight_bits": "8"},
        {"act_bits": 0},
        {"averaging_constant": 0.0},
        {"averaging_constant": 1.5},
    ],
)
def test_bad_settings_raise_lowbit_errors(kwargs: dict) -> None:
    with pytest.raises(LowbitError):
        QATLinear(nn.Linear(3, 2), **kwargs)


def test_bad_modules_and_inputs_raise_lowbit_errors() -> None:
    with pytest.raises(LowbitError, match=r"nn\.Linear"):
        QATLinear(nn.Conv2d(1, 1, 1))  # type: ignore[arg-type]
    with pytest.raises(LowbitError, match=r"nn\.Conv2d"):
        QATConv2d(nn.Linear(1, 1))  # type: ignore[arg-type]
    m = QATLinear(nn.Linear(3, 2))
    with pytest.raises(LowbitError, match="float"):
        m(torch.ones(1, 3, dtype=torch.int64))
    with pytest.raises(LowbitError, match="NaN"):
        m(torch.tensor([[1.0, float("nan"), 0.0]]))


def test_options_object_and_keywords_are_the_same_settings() -> None:
    lin = nn.Linear(3, 2)
    m = QATLinear(lin, QATOptions(weight_bits=4), learnable=True)
    assert (
        m.options
        == QATOptions(weight_bits=4, learnable=True)
        == QATLinear(lin, **vars(m.options)).options
    )
    assert m.weight_qtype.bits == 4 and m.learnable
