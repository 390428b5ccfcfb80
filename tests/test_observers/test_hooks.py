"""Hooks feed observers from module inputs/outputs, never change outputs, and go away."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lowbit.errors import InvalidInputError, InvalidSpecError
from lowbit.observers import MinMaxObserver, ObserverHook, PercentileObserver, observe_module


def _model() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))


def _no_hooks(module: nn.Module) -> bool:
    return not module._forward_hooks and not module._forward_pre_hooks


def test_output_hook_observes_without_changing_outputs() -> None:
    model = _model()
    x = torch.randn(2, 3, 8, 8)
    before = model(x)
    x_copy = x.clone()
    with ObserverHook(model[0], MinMaxObserver(axis=1)) as obs:
        during = model(x)
        during.sum().backward()  # gradients flow as usual
    assert torch.equal(before, during) and torch.equal(x, x_copy)
    assert _no_hooks(model[0])
    conv_out = model[0](x).detach()
    lo, hi = obs.clip_range(symmetric=False)
    assert torch.equal(hi, conv_out.amax(dim=(0, 2, 3)))
    assert torch.equal(lo, conv_out.amin(dim=(0, 2, 3)))
    model(x)  # after the block nothing is observed any more
    assert obs.num_batches == 1


def test_input_hook_sees_the_module_input() -> None:
    model = _model()
    x = torch.randn(3, 3, 8, 8)
    with observe_module(model[3], "minmax", on="input") as obs:
        out = model(x)
    assert torch.equal(out, model(x)) and _no_hooks(model[3])
    flat_in = torch.relu(model[0](x)).flatten(1).detach()
    assert float(obs.clip_range()[1]) == float(flat_in.abs().max())


def test_hook_removed_after_an_error() -> None:
    model = _model()
    with pytest.raises(RuntimeError), ObserverHook(model[0], MinMaxObserver()):
        model(torch.randn(2, 5, 8, 8))  # wrong channel count: conv raises
    assert _no_hooks(model[0])


def test_attach_detach_and_tuple_outputs() -> None:
    class Pair(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x * 2, x

    hook = ObserverHook(Pair(), PercentileObserver(percentile=100.0))
    obs = hook.attach()
    with pytest.raises(InvalidSpecError, match="already attached"):
        hook.attach()
    hook.module(torch.tensor([1.0, -3.0]))
    hook.detach()
    hook.detach()  # idempotent
    assert not hook.attached and float(obs.clip_range()[1]) == 6.0


def test_errors() -> None:
    class NoTensor(nn.Module):
        def forward(self, x: torch.Tensor) -> str:
            return "nothing"

    module = NoTensor()
    with pytest.raises(InvalidInputError, match="no tensor"), observe_module(module, "minmax"):
        module(torch.ones(1))
    assert _no_hooks(module)
    with pytest.raises(InvalidSpecError, match="'input' or 'output'"):
        ObserverHook(nn.Identity(), MinMaxObserver(), on="weights")  # type: ignore[arg-type]
    with pytest.raises(InvalidSpecError, match="by name"):
        observe_module(nn.Identity(), MinMaxObserver(), percentile=99.0)


def test_input_hook_observes_a_later_positional_input() -> None:
    """``arg=1`` feeds the second input (lowbit.nn.Add's "other" slot in static PTQ)."""
    from lowbit.nn import Add

    add = Add()
    a, b = torch.randn(3, 4), torch.randn(3, 4) * 10
    with ObserverHook(add, MinMaxObserver(), on="input", arg=1) as obs:
        add(a, b)
    assert float(obs.min_val) == float(b.min()) and float(obs.max_val) == float(b.max())
    with pytest.raises(InvalidSpecError, match="arg"):
        ObserverHook(add, MinMaxObserver(), on="input", arg=-1)
