"""Granularity: parameter shapes, blocked views and broadcasting."""

from __future__ import annotations

import pytest
import torch

from lowbit.errors import InvalidSpecError
from lowbit.formats.granularity import (
    PerAxis,
    PerGroup,
    PerTensor,
    broadcast_to,
    from_blocks,
    param_shape,
    params_to_blocks,
    to_blocks,
)


@pytest.mark.parametrize(
    ("granularity", "expected"),
    [
        (PerTensor(), ()),
        (PerAxis(0), (4,)),
        (PerAxis(2), (5,)),
        (PerGroup(3), (4, 6, 2)),
        (PerGroup(4, axis=1), (4, 2, 5)),
    ],
)
def test_param_shape(granularity, expected) -> None:
    assert param_shape((4, 6, 5), granularity) == expected


def test_ragged_group_padding_keeps_min_and_max() -> None:
    x = torch.arange(10.0).reshape(1, 10)
    blocks = to_blocks(x, PerGroup(4))
    assert blocks.shape == (1, 3, 4)
    assert blocks[0, 2].tolist() == [8, 9, 9, 9]


@pytest.mark.parametrize("granularity", [PerTensor(), PerAxis(1), PerGroup(3), PerGroup(2, 0)])
def test_blocks_round_trip_and_broadcast(granularity) -> None:
    x = torch.randn(4, 7)
    amax = to_blocks(x, granularity).abs().amax(-1, keepdim=True)
    params = from_blocks(amax, (4, 7), granularity)
    assert params.shape == param_shape((4, 7), granularity)
    assert torch.equal(params_to_blocks(params, (4, 7), granularity), amax)
    assert bool((x.abs() <= broadcast_to(params, (4, 7), granularity)).all())


def test_bad_granularity() -> None:
    with pytest.raises(InvalidSpecError):
        PerGroup(0)
    with pytest.raises(InvalidSpecError, match="out of range"):
        param_shape((3, 4), PerAxis(2))
