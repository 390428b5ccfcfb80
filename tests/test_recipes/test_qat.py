"""prepare_qat → train → convert gives int8 modules that compute what training simulated."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lowbit.errors import InvalidInputError
from lowbit.eval.metrics import sqnr_db
from lowbit.nn.qat import QATConv2d, QATLinear
from lowbit.recipes import convert, prepare_qat


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 32),
        nn.ReLU(),
        nn.Linear(32, 4),
    ).eval()


def test_prepare_train_convert() -> None:
    model = _model()
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(64, 1, 8, 8)
    y = torch.randint(0, 4, (64,))
    qat = prepare_qat(model, "int8-qat", example_inputs=x)
    assert isinstance(qat[0], QATConv2d) and isinstance(qat[5], QATLinear)
    assert isinstance(qat[1], nn.Identity)  # BatchNorm folded
    opt = torch.optim.SGD(qat.parameters(), lr=0.05)
    losses = []
    for _ in range(15):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(qat(x), y)
        loss.backward()
        assert qat[0].weight.grad is not None and torch.isfinite(qat[0].weight.grad).all()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    int8 = convert(qat.eval(), example_inputs=x)
    with torch.no_grad():
        simulated, real = qat.eval()(x), int8(x)
    assert sqnr_db(simulated, real) > 30


def test_convert_without_qat_layers_and_bn_without_example() -> None:
    with pytest.raises(InvalidInputError, match="prepare_qat"):
        convert(nn.Linear(3, 3))
    with pytest.raises(InvalidInputError, match="example_inputs"):
        prepare_qat(_model(), "int8-qat")
