"""Tracing module flow by tensor identity, and Conv/Linear + BatchNorm + ReLU fusion."""

from __future__ import annotations

import torch
from torch import nn

from lowbit.recipes.fuse import apply_fusions, find_fusions, fold_batchnorm, fused_parts
from lowbit.recipes.trace import trace_flow


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.ReLU()
        self.conv_b = nn.Conv2d(8, 8, 3, padding=1)  # output used twice: not fusable
        self.bn_b = nn.BatchNorm2d(8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(8, 4)
        self.fc_act = nn.ReLU()

    def forward(self, x):
        x = self.act(self.bn(self.conv(x)))
        y = self.conv_b(x)
        y = self.bn_b(y) + y
        return self.fc_act(self.fc(self.flat(self.pool(y))))


def _randomize_bn(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)


def test_flow_follows_tensors() -> None:
    flow = trace_flow(Net().eval(), torch.randn(2, 3, 8, 8))
    assert flow.order[:3] == ["conv", "bn", "act"]
    assert flow.consumers["conv"] == ["bn"]
    assert flow.only_consumer("conv_b") is None  # feeds bn_b and the functional add
    assert "fc_act" in flow.output_is_model_output


def test_fusion_finds_chains_and_keeps_outputs() -> None:
    model = Net().eval()
    _randomize_bn(model)
    x = torch.randn(2, 3, 8, 8)
    groups = find_fusions(model, trace_flow(model, x))
    assert [(g.producer, g.batchnorm, g.relu) for g in groups] == [
        ("conv", "bn", "act"),
        ("fc", None, "fc_act"),
    ]
    with torch.no_grad():
        before = model(x)
        apply_fusions(model, groups)
        after = model(x)
    assert torch.allclose(before, after, atol=1e-5)
    assert isinstance(model.bn, nn.Identity) and isinstance(model.act, nn.Identity)
    assert fused_parts(model.conv)[1] is True
    assert isinstance(model.bn_b, nn.BatchNorm2d)  # conv_b's output had two users


def test_fold_batchnorm_linear() -> None:
    fc, bn = nn.Linear(5, 3, bias=False), nn.BatchNorm1d(3).eval()
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    x = torch.randn(4, 5)
    with torch.no_grad():
        assert torch.allclose(fold_batchnorm(fc, bn)(x), bn(fc(x)), atol=1e-6)
