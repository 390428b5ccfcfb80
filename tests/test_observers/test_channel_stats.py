"""ChannelStatsObserver: per-channel mean|x| and max|x| equal a direct computation, do not
depend on how the data is split into batches, and the row sample is a bounded, deterministic
subset of the observed rows."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lowbit.errors import InvalidInputError, InvalidSpecError
from lowbit.observers.channel_stats import ChannelStatsObserver
from lowbit.observers.hooks import ObserverHook


def feed(obs: ChannelStatsObserver, x: torch.Tensor, sizes: list[int]) -> ChannelStatsObserver:
    for batch in x.split(sizes):
        obs.observe(batch)
    return obs


def test_statistics_match_direct_computation() -> None:
    x = torch.randn(6, 50, 24) * torch.linspace(0.1, 10, 24)
    obs = feed(ChannelStatsObserver(), x, [1, 2, 3])
    rows = x.reshape(-1, 24)
    assert torch.allclose(obs.mean_abs, rows.abs().mean(0), rtol=1e-6)
    assert torch.equal(obs.max_abs, rows.abs().amax(0))
    assert obs.num_rows == 300 and obs.num_batches == 3
    lo, hi = obs.clip_range(symmetric=False)
    assert torch.equal(lo, rows.amin(0)) and torch.equal(hi, rows.amax(0))
    lo, hi = obs.clip_range(symmetric=True)
    assert torch.equal(hi, rows.abs().amax(0)) and torch.equal(lo, -hi)


def test_channel_axis_one_for_conv_activations() -> None:
    x = torch.randn(4, 8, 5, 5)
    obs = feed(ChannelStatsObserver(axis=1, sample_rows=30), x, [3, 1])
    per_channel = x.transpose(0, 1).reshape(8, -1)
    assert torch.allclose(obs.mean_abs, per_channel.abs().mean(1), rtol=1e-6)
    assert obs.sample.shape == (30, 8)


def test_batch_split_independent() -> None:
    x = torch.randn(1000, 16) * 3
    whole = feed(ChannelStatsObserver(sample_rows=64, seed=3), x, [1000])
    split = feed(ChannelStatsObserver(sample_rows=64, seed=3), x, [1, 99, 400, 17, 483])
    assert torch.allclose(whole.mean_abs, split.mean_abs, rtol=1e-6, atol=0)
    assert torch.equal(whole.max_abs, split.max_abs)
    assert torch.equal(whole.sample, split.sample)


def test_sample_is_a_bounded_subset_of_rows_in_order() -> None:
    n = 5000
    x = torch.randn(n, 4)
    x[:, 0] = torch.arange(n, dtype=torch.float32)  # column 0 names the row
    obs = feed(ChannelStatsObserver(sample_rows=500), x, [700] * 7 + [100])
    sample = obs.sample
    idx = sample[:, 0].long()
    assert sample.shape == (500, 4)
    assert torch.equal(sample, x[idx])  # real rows, unchanged
    assert bool((idx[1:] > idx[:-1]).all())  # distinct, in observed order
    # Roughly uniform over the data: each fifth of the rows holds about a fifth of the sample.
    counts = torch.bincount(idx // (n // 5), minlength=5)
    assert bool((counts > 60).all()), counts
    other = feed(ChannelStatsObserver(sample_rows=500, seed=1), x, [n])
    assert not torch.equal(other.sample, sample)


def test_small_data_keeps_every_row() -> None:
    x = torch.randn(10, 3)
    assert torch.equal(feed(ChannelStatsObserver(sample_rows=64), x, [4, 6]).sample, x)


def test_hook_feeds_layer_inputs_and_leaves_outputs_alone() -> None:
    layer = nn.Linear(12, 5)
    x = torch.randn(2, 7, 12)
    ref = layer(x)
    with ObserverHook(layer, ChannelStatsObserver(sample_rows=100), on="input") as obs:
        out = layer(x)
    assert torch.equal(out, ref)
    assert torch.equal(obs.sample, x.reshape(-1, 12))
    assert torch.equal(obs.max_abs, x.reshape(-1, 12).abs().amax(0))


def test_errors_and_reset() -> None:
    obs = ChannelStatsObserver()
    with pytest.raises(InvalidInputError, match="observed no data"):
        obs.mean_abs  # noqa: B018
    obs.observe(torch.randn(3, 4))
    with pytest.raises(InvalidInputError, match="sample_rows"):
        obs.sample  # noqa: B018
    with pytest.raises(InvalidInputError, match="channel"):
        obs.observe(torch.randn(3, 5))
    with pytest.raises(InvalidSpecError, match="channel axis"):
        ChannelStatsObserver(axis=None)
    with pytest.raises(InvalidSpecError, match="sample_rows"):
        ChannelStatsObserver(sample_rows=-1)
    obs = ChannelStatsObserver(sample_rows=8, seed=2)
    obs.observe(torch.randn(20, 4))
    obs.reset()
    assert obs.num_rows == 0 and obs.sample_rows == 8 and obs.seed == 2
    y = torch.randn(5, 4)
    obs.observe(y)
    assert torch.equal(obs.sample, y)
