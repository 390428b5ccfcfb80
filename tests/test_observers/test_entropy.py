"""Entropy (KL) calibration: matches a literal port of MXNet's search, clips outliers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lowbit.errors import InvalidSpecError
from lowbit.formats.affine import fake_quantize
from lowbit.formats.qtypes import IntType
from lowbit.observers import EntropyObserver, MinMaxObserver
from lowbit.observers.entropy import kl_threshold_bins


def _reference_threshold_bins(hist: list[float], levels: int) -> int:
    """MXNet's _get_optimal_threshold loop on an |x| histogram, written out with plain
    Python loops (float Q, eps = 1e-4 smoothing, first minimum wins)."""

    def smooth(p: list[float]) -> list[float] | None:
        n_zeros = sum(1 for v in p if v == 0)
        n_nonzeros = len(p) - n_zeros
        if n_nonzeros == 0:
            return None
        eps1 = 1e-4 * n_zeros / n_nonzeros
        out = [1e-4 if v == 0 else v - eps1 for v in p]
        return out if all(v > 0 for v in out) else None

    best_i, best_kl = len(hist), math.inf
    for i in range(levels, len(hist) + 1):
        p = list(hist[:i])
        p[-1] += sum(hist[i:])
        merged = i // levels
        q = [0.0] * i
        for j in range(levels):
            start = j * merged
            stop = i if j == levels - 1 else start + merged
            total = sum(hist[start:stop])
            norm = sum(1 for v in p[start:stop] if v != 0)
            for k in range(start, stop):
                q[k] = total / norm if p[k] != 0 else 0.0
        ps, qs = smooth(p), smooth(q)
        if ps is None or qs is None:
            continue
        sp, sq = sum(ps), sum(qs)
        kl = sum(a / sp * math.log((a / sp) / (b / sq)) for a, b in zip(ps, qs, strict=True))
        if kl < best_kl:
            best_i, best_kl = i, kl
    return best_i


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kl_search_matches_reference_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    values = np.abs(rng.standard_t(df=3, size=3000))
    hist, _ = np.histogram(values, bins=96, range=(0, values.max()))
    hist = hist.astype(np.float64)
    assert kl_threshold_bins(hist, 8) == _reference_threshold_bins(hist.tolist(), 8)


def test_clips_outliers_and_beats_minmax_on_the_bulk() -> None:
    x = torch.randn(100000)
    x[torch.randperm(x.numel())[:5]] = 50.0
    ent, mm = EntropyObserver(), MinMaxObserver()
    for chunk in x.split(20000):
        ent.observe(chunk)
        mm.observe(chunk)
    t = float(ent.threshold())
    assert 2.0 < t < 0.2 * 50.0
    lo, hi = ent.clip_range()
    assert float(hi) == t and float(lo) == -t
    bulk = x[x.abs() < 10]
    qtype = IntType(8, True)
    err_ent = (fake_quantize(bulk, ent.qparams(qtype)) - bulk).pow(2).mean()
    err_mm = (fake_quantize(bulk, mm.qparams(qtype)) - bulk).pow(2).mean()
    assert err_ent < 0.1 * err_mm


def test_asymmetric_range_stays_inside_the_data() -> None:
    x = torch.randn(50000).relu()
    obs = EntropyObserver()
    obs.observe(x)
    lo, hi = obs.clip_range(symmetric=False)
    assert float(lo) == 0.0 and 0.0 < float(hi) <= float(x.max())


def test_per_channel_is_refused() -> None:
    with pytest.raises(InvalidSpecError, match="per-tensor"):
        EntropyObserver(axis=1)
    with pytest.raises(InvalidSpecError, match="bins"):
        EntropyObserver(bins=64)


def test_one_sided_asymmetric_range_uses_all_codes() -> None:
    """After a ReLU an asymmetric uint8 grid has 256 levels on [0, T]: KL over 256 levels
    clips no harder than over 128 (the signed grid)."""
    x = torch.randn(200_000, generator=torch.Generator().manual_seed(3)).relu()
    obs = EntropyObserver()
    obs.observe(x)
    lo, hi = obs.clip_range(symmetric=False)
    assert float(lo) == 0.0
    assert float(hi) >= float(obs.threshold())
    assert float(hi) == pytest.approx(float(obs.threshold(256)))
