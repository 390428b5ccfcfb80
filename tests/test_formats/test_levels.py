"""Binary and ternary weights: codes, magnitudes and thresholds as published."""

from __future__ import annotations

import pytest
import torch

from lowbit.formats.granularity import PerAxis, PerGroup, PerTensor
from lowbit.formats.levels import choose_levels_scale, dequantize_levels, quantize_levels
from lowbit.formats.qtypes import BINARY, TERNARY


def test_binary_uses_sign_and_mean_abs() -> None:
    x = torch.tensor([0.5, -1.5, 2.0, -0.0])
    a, thr = choose_levels_scale(x, BINARY)
    assert float(a) == pytest.approx(1.0)
    q = quantize_levels(x, thr, BINARY)
    assert q.tolist() == [1, 0, 1, 1]
    assert dequantize_levels(q, a, BINARY).tolist() == [1.0, -1.0, 1.0, 1.0]


def test_ternary_threshold_and_magnitude_by_hand() -> None:
    x = torch.tensor([0.1, -0.5, 0.3, 1.0])
    a, thr = choose_levels_scale(x, TERNARY)
    assert float(thr) == pytest.approx(0.7 * 0.475)
    assert float(a) == pytest.approx(0.75)  # mean of |-0.5|, |1.0|
    q = quantize_levels(x, thr, TERNARY)
    assert q.tolist() == [1, 0, 1, 2]
    assert dequantize_levels(q, a, TERNARY).tolist() == [0.0, -0.75, 0.0, 0.75]


@pytest.mark.parametrize("granularity", [PerTensor(), PerAxis(0), PerGroup(7)])
def test_ragged_groups_use_only_real_elements(granularity) -> None:
    x = torch.randn(3, 20)
    _, thr = choose_levels_scale(x, TERNARY, granularity)
    if isinstance(granularity, PerGroup):
        last = x[:, 14:]
        assert torch.allclose(thr[:, -1], 0.7 * last.abs().mean(dim=1))
    a_b, _ = choose_levels_scale(x, BINARY, granularity)
    if isinstance(granularity, PerAxis):
        assert torch.allclose(a_b, x.abs().mean(dim=1))


def test_binary_minimises_error_over_magnitude() -> None:
    x = torch.randn(1000)
    a, thr = choose_levels_scale(x, BINARY)
    q = quantize_levels(x, thr, BINARY)
    err = lambda m: float(((dequantize_levels(q, torch.tensor(m), BINARY)) - x).pow(2).sum())  # noqa: E731
    assert err(float(a)) <= min(err(float(a) * 1.05), err(float(a) * 0.95))
