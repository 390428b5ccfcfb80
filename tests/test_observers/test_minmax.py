"""Min/max observers against hand-computed values and against choose_qparams on all data."""

from __future__ import annotations

import pytest
import torch

from lowbit.errors import InvalidSpecError
from lowbit.formats.affine import choose_qparams
from lowbit.formats.granularity import PerAxis, PerTensor
from lowbit.formats.qtypes import IntType
from lowbit.observers import MinMaxObserver, MovingAverageMinMaxObserver


def test_minmax_running_range_by_hand() -> None:
    obs = MinMaxObserver()
    obs.observe(torch.tensor([1.0, -2.0, 3.0]))
    obs.observe(torch.tensor([0.5, 4.0]))
    obs.observe(torch.tensor([-5.0, 0.0]))
    lo, hi = obs.clip_range(symmetric=False)
    assert (float(lo), float(hi)) == (-5.0, 4.0)
    lo, hi = obs.clip_range()
    assert (float(lo), float(hi)) == (-5.0, 5.0)
    assert lo.shape == () and obs.num_batches == 3


def test_minmax_per_channel_by_hand() -> None:
    # (N=2, C=3, L=2), channel axis 1
    x = torch.tensor(
        [[[1.0, 2.0], [-1.0, 0.0], [7.0, 8.0]], [[3.0, -4.0], [0.5, 0.25], [6.0, 9.0]]]
    )
    obs = MinMaxObserver(axis=1)
    obs.observe(x)
    lo, hi = obs.clip_range(symmetric=False)
    assert lo.tolist() == [-4.0, -1.0, 6.0]
    assert hi.tolist() == [3.0, 0.5, 9.0]
    lo, hi = obs.clip_range()
    assert hi.tolist() == [4.0, 1.0, 9.0] and torch.equal(lo, -hi)


def test_moving_average_by_hand() -> None:
    obs = MovingAverageMinMaxObserver(averaging_constant=0.25)
    obs.observe(torch.tensor([-4.0, 8.0]))  # first batch sets the range
    obs.observe(torch.tensor([0.0, 0.0]))  # min: -4 + 0.25·(0 + 4) = -3; max: 8 - 2 = 6
    obs.observe(torch.tensor([-7.0, 10.0]))  # min: -3 + 0.25·(-4) = -4; max: 6 + 1 = 7
    lo, hi = obs.clip_range(symmetric=False)
    assert float(lo) == pytest.approx(-4.0) and float(hi) == pytest.approx(7.0)


def test_moving_average_per_channel() -> None:
    obs = MovingAverageMinMaxObserver(axis=-1, averaging_constant=0.5)
    obs.observe(torch.tensor([[0.0, -2.0], [4.0, 2.0]]))  # channels: [0, 4], [-2, 2]
    obs.observe(torch.tensor([[2.0, 0.0], [2.0, 0.0]]))  # channels: [2, 2], [0, 0]
    lo, hi = obs.clip_range(symmetric=False)
    assert lo.tolist() == [1.0, -1.0] and hi.tolist() == [3.0, 1.0]


@pytest.mark.parametrize("c", [0.0, 1.5])
def test_moving_average_rejects_bad_constant(c: float) -> None:
    with pytest.raises(InvalidSpecError, match="averaging_constant"):
        MovingAverageMinMaxObserver(averaging_constant=c)


@pytest.mark.parametrize(
    ("qtype", "symmetric", "form"),
    [
        (IntType(8, True), True, "offset"),
        (IntType(4, False), False, "zero_point"),
        (IntType(8, False), False, "offset"),
    ],
)
def test_minmax_qparams_equal_choose_qparams_on_all_data(qtype, symmetric, form) -> None:
    batches = [torch.randn(4, 3, 5, 5) * (i + 1) + i for i in range(3)]
    data = torch.cat(batches)
    for axis, gran in [(None, PerTensor()), (1, PerAxis(1))]:
        obs = MinMaxObserver(axis=axis)
        for b in batches:
            obs.observe(b)
        got = obs.qparams(qtype, symmetric=symmetric, form=form)
        want = choose_qparams(data, qtype, gran, symmetric=symmetric, form=form)
        assert got.granularity == want.granularity
        assert torch.equal(got.scale, want.scale)
        for a, b in [(got.zero_point, want.zero_point), (got.offset, want.offset)]:
            assert (a is None and b is None) or torch.equal(a, b)
