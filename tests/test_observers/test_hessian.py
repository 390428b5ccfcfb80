"""HessianObserver accumulates 2/n·XᵀX of a layer's inputs, whatever the batching."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lowbit.errors import InvalidInputError, InvalidSpecError
from lowbit.observers import HessianObserver, ObserverHook


def _direct(x: torch.Tensor) -> torch.Tensor:
    rows = x.reshape(-1, x.shape[-1]).double()
    return 2.0 / rows.shape[0] * rows.T @ rows


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_direct_formula_and_is_independent_of_batching(dtype: torch.dtype) -> None:
    x = torch.randn(6, 20, 16) * torch.linspace(0.1, 3.0, 16)
    whole = HessianObserver(dtype=dtype)
    whole.observe(x)
    split = HessianObserver(16, dtype=dtype)
    # Uneven splits, different leading shapes, an empty batch in between.
    split.observe(x[:1])
    split.observe(x[1:4].reshape(-1, 16))
    split.observe(torch.empty(0, 16))
    split.observe(x[4:])
    expected = _direct(x)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for obs in (whole, split):
        h = obs.hessian()
        assert h.dtype == dtype and h.shape == (16, 16)
        torch.testing.assert_close(h.double(), expected, rtol=tol, atol=tol)
    assert split.num_samples == whole.num_samples == 120
    assert split.num_batches == 3  # the empty batch is skipped
    if dtype == torch.float64:
        torch.testing.assert_close(split.hessian(), whole.hessian(), rtol=1e-13, atol=1e-13)


def test_hessian_is_a_copy_and_reset_forgets() -> None:
    obs = HessianObserver()
    obs.observe(torch.randn(10, 4))
    h = obs.hessian()
    h.zero_()
    assert obs.hessian().abs().sum() > 0
    obs.reset()
    assert obs.num_samples == 0 and obs.in_features == 4
    with pytest.raises(InvalidInputError, match="no data"):
        obs.hessian()


def test_feeds_from_an_input_hook_without_changing_outputs() -> None:
    layer = nn.Linear(8, 3)
    x = torch.randn(5, 7, 8)
    before = layer(x)
    with ObserverHook(layer, HessianObserver(8, dtype=torch.float64), on="input") as obs:
        during = layer(x)
    assert torch.equal(before, during)
    assert not layer._forward_pre_hooks
    torch.testing.assert_close(obs.hessian(), _direct(x))


def test_errors_name_the_problem() -> None:
    obs = HessianObserver(4)
    with pytest.raises(InvalidInputError, match="last dimension 4"):
        obs.observe(torch.randn(3, 5))
    with pytest.raises(InvalidInputError, match="NaN"):
        obs.observe(torch.tensor([[1.0, float("nan"), 0.0, 0.0]]))
    with pytest.raises(InvalidInputError, match=r"torch\.Tensor"):
        obs.observe([[1.0, 2.0, 3.0, 4.0]])  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="shape"):
        obs.observe(torch.tensor(1.0))
    with pytest.raises(InvalidSpecError, match=r"float32 or torch\.float64"):
        HessianObserver(dtype=torch.float16)
    with pytest.raises(InvalidSpecError, match="in_features"):
        HessianObserver(0)
