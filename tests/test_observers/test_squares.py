"""SquaresObserver: Σx² per input column and the row count (llama.cpp's imatrix statistic)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lowbit.errors import InvalidInputError
from lowbit.observers.hooks import ObserverHook
from lowbit.observers.squares import SquaresObserver


def test_mean_squares_over_every_row_whatever_the_batches():
    x = torch.randn(2, 7, 5, generator=torch.Generator().manual_seed(0))
    whole, split = SquaresObserver(), SquaresObserver()
    whole.observe(x)
    split.observe(x[:1])
    split.observe(x[1:, :3])
    split.observe(x[1:, 3:])
    expect = (x.double() ** 2).reshape(-1, 5).sum(0)
    assert whole.num_rows == split.num_rows == 14
    assert torch.allclose(whole.sum_squares, expect) and torch.allclose(split.sum_squares, expect)
    assert torch.equal(whole.mean_squares(), (expect / 14).float())


def test_observes_a_linear_layers_input_through_the_hook():
    layer = nn.Linear(4, 3)
    x = torch.randn(6, 4)
    with ObserverHook(layer, SquaresObserver(), on="input") as obs:
        layer(x)
    assert torch.allclose(obs.mean_squares(), (x**2).mean(0))


def test_bad_inputs_are_clear_errors():
    obs = SquaresObserver()
    with pytest.raises(InvalidInputError, match="no data"):
        obs.mean_squares()
    with pytest.raises(InvalidInputError, match=r"NaN|Inf|non-finite"):
        obs.observe(torch.tensor([[1.0, float("nan")]]))
    obs.observe(torch.ones(2, 3))
    with pytest.raises(InvalidInputError, match="one observer per layer"):
        obs.observe(torch.ones(2, 4))
    obs.reset()
    assert obs.num_rows == 0
