"""The growing histogram re-bins exactly and keeps every count."""

from __future__ import annotations

import pytest
import torch

from lowbit.observers.histogram import GrowingHistogram


def test_growth_is_exact_rebinning() -> None:
    # The grown histogram must equal one built directly over the final range.
    bins = 16
    batches = [torch.rand(200) * 2 - 1, torch.randn(300) * 1.5, torch.rand(100) * 6.5 - 3.25]
    batches[0][0], batches[1][0], batches[2][0] = 1.0, 3.0, -7.5  # radius grows 1 -> 4 -> 8
    hist = GrowingHistogram(1, bins, torch.device("cpu"))
    for b in batches:
        hist.add(b[None])
    radius = float(hist.radius[0])
    assert radius == pytest.approx(8.0, rel=1e-3) and radius > 7.5
    want = torch.histc(torch.cat(batches), bins=2 * bins, min=-radius, max=radius).long()
    assert torch.equal(hist.counts[0], want)
    assert int(hist.abs_counts().sum()) == 600


def test_zero_channel_then_data_and_per_channel_growth() -> None:
    hist = GrowingHistogram(2, 8, torch.device("cpu"))
    hist.add(torch.tensor([[0.0, 0.0, 0.0], [1.0, -1.0, 0.5]]))
    assert float(hist.radius[0]) == 0.0 and float(hist.radius[1]) > 1.0
    hist.add(torch.tensor([[2.0, -2.0, 0.0], [100.0, 0.0, 0.0]]))
    # channel 0 starts just above 2; channel 1 doubles from just above 1 to ~128 (7 times)
    assert hist.radius.tolist() == pytest.approx([2.0, 128.0], rel=1e-3)
    assert hist.counts.sum(dim=1).tolist() == [6, 6]
    # |x| bins are R/8 wide: channel 0's four zeros in [0, 0.25), ±2 in the top bin;
    # channel 1's 1, -1, 0.5 merged into [0, 16) with its two zeros, 100 in [96, 112)
    assert hist.abs_counts().tolist() == [[4, 0, 0, 0, 0, 0, 0, 2], [5, 0, 0, 0, 0, 0, 1, 0]]
