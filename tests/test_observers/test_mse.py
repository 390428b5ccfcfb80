"""MSE clipping search: beats min/max with outliers and finds the brute-force optimum."""

from __future__ import annotations

import pytest
import torch

from lowbit.errors import InvalidSpecError
from lowbit.formats.affine import choose_qparams, fake_quantize
from lowbit.formats.granularity import PerAxis
from lowbit.formats.qtypes import IntType
from lowbit.observers import MinMaxObserver, MSEObserver


def _mse(x: torch.Tensor, qp) -> float:
    return float((fake_quantize(x, qp) - x).pow(2).mean())


def _outlier_data() -> torch.Tensor:
    x = torch.randn(40000)
    x[torch.randperm(x.numel())[:2]] = 50.0
    return x


@pytest.mark.parametrize("bits", [8, 4])
def test_beats_minmax_and_matches_brute_force(bits: int) -> None:
    x = _outlier_data()
    qtype = IntType(bits, True)
    mse_obs, mm_obs = MSEObserver(bits=bits), MinMaxObserver()
    for chunk in x.split(10000):
        mse_obs.observe(chunk)
        mm_obs.observe(chunk)
    got = _mse(x, mse_obs.qparams(qtype))
    assert got < _mse(x, mm_obs.qparams(qtype))
    # The best of a dense grid of clip ranges measured on the raw data.
    grid = torch.logspace(-2, 0, 100) * 50.0
    best = min(_mse(x, choose_qparams(x, qtype, clip=float(c))) for c in grid)
    assert got <= best * 1.01
    _, hi = mse_obs.clip_range()
    if bits == 4:  # at 4 bits the optimum clips far below the outliers
        assert float(hi) < 5.0


def test_asymmetric_beats_minmax() -> None:
    x = _outlier_data().abs()  # one-sided, like a ReLU output
    qtype = IntType(4, False)
    obs, mm = MSEObserver(bits=4), MinMaxObserver()
    obs.observe(x)
    mm.observe(x)
    for form in ("offset", "zero_point"):
        got = _mse(x, obs.qparams(qtype, symmetric=False, form=form))
        assert got < 0.5 * _mse(x, mm.qparams(qtype, symmetric=False, form=form))
    lo, hi = obs.clip_range(symmetric=False)
    assert float(x.min()) <= float(lo) < float(hi) < 50.0


def test_per_channel_search_is_per_channel() -> None:
    # channel 0 Gaussian with outliers (optimum far below max), channel 1 uniform (max).
    x = torch.stack([_outlier_data(), torch.rand(40000) * 2 - 1], dim=1)  # (N, 2)
    obs = MSEObserver(axis=1, bits=4)
    obs.observe(x)
    lo, hi = obs.clip_range()
    assert hi.shape == lo.shape == (2,)
    assert float(hi[0]) < 5.0
    assert float(hi[1]) > 0.9  # uniform data: clipping only hurts
    qp = obs.qparams(IntType(4, True))
    assert qp.granularity == PerAxis(1) and qp.scale.shape == (2,)
    mm = MinMaxObserver(axis=1)
    mm.observe(x)
    assert _mse(x, qp) < _mse(x, mm.qparams(IntType(4, True)))


def test_qparams_search_uses_the_requested_grid() -> None:
    # Built for 8 bits, asked for 3-bit qparams: the search must use the 3-bit grid.
    x = torch.randn(50000)
    obs = MSEObserver(bits=8)
    obs.observe(x)
    _, hi8 = obs.clip_range()
    qp3 = obs.qparams(IntType(3, True))
    assert float(qp3.scale) * 3 < 0.8 * float(hi8)


def test_rejects_bad_options() -> None:
    with pytest.raises(InvalidSpecError, match="bits"):
        MSEObserver(bits=1)
    with pytest.raises(InvalidSpecError, match="min_fraction"):
        MSEObserver(min_fraction=0.0)
