"""Percentile clipping against torch.quantile, within the histogram's bin width."""

from __future__ import annotations

import pytest
import torch

from lowbit.errors import InvalidSpecError
from lowbit.observers import PercentileObserver


@pytest.mark.parametrize("pct", [99.99, 99.0, 90.0])
def test_matches_torch_quantile_per_tensor(pct: float) -> None:
    x = torch.randn(20000) * 2 + 0.5
    obs = PercentileObserver(percentile=pct)
    for chunk in x.split(4096):
        obs.observe(chunk)
    # The answer is exact up to the histogram bin (R/bins, R < 2·max|x|).
    tol = float(obs.hist.radius[0]) / obs.bins
    q = pct / 100
    _, hi = obs.clip_range()
    assert float(hi) == pytest.approx(float(torch.quantile(x.abs(), q)), abs=tol)
    lo, hi = obs.clip_range(symmetric=False)
    assert float(lo) == pytest.approx(float(torch.quantile(x, 1 - q)), abs=tol)
    assert float(hi) == pytest.approx(float(torch.quantile(x, q)), abs=tol)


def test_matches_torch_quantile_per_channel() -> None:
    x = torch.randn(500, 6, 4) * torch.arange(1, 7).reshape(1, 6, 1)
    x[0, 5, 0] = 1000.0  # one channel with a huge outlier: only its own range grows
    obs = PercentileObserver(axis=1, percentile=99.0)
    obs.observe(x[:250])
    obs.observe(x[250:])
    lo, hi = obs.clip_range(symmetric=False)
    assert lo.shape == hi.shape == (6,)
    per_channel = x.movedim(1, 0).reshape(6, -1)
    tol = obs.hist.radius / obs.bins
    assert torch.all((hi - torch.quantile(per_channel, 0.99, dim=1)).abs() <= tol)
    assert torch.all((lo - torch.quantile(per_channel, 0.01, dim=1)).abs() <= tol)
    assert float(hi[5]) < 100.0  # the outlier is clipped away


def test_hundred_percent_is_minmax() -> None:
    x = torch.randn(1000)
    obs = PercentileObserver(percentile=100.0)
    obs.observe(x)
    lo, hi = obs.clip_range(symmetric=False)
    assert float(lo) == float(x.min()) and float(hi) == float(x.max())


@pytest.mark.parametrize("pct", [10.0, 100.5])
def test_rejects_bad_percentile(pct: float) -> None:
    with pytest.raises(InvalidSpecError, match="percentile"):
        PercentileObserver(percentile=pct)
