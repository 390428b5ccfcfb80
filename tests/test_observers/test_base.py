"""What every observer shares: clear errors, read-only observing, registry and reset."""

from __future__ import annotations

import pytest
import torch

from lowbit.errors import InvalidInputError, InvalidSpecError, LowbitError
from lowbit.formats.granularity import PerAxis
from lowbit.formats.qtypes import IntType
from lowbit.observers import OBSERVERS, make_observer

ALL = sorted(OBSERVERS)
PER_CHANNEL = [n for n in ALL if n != "entropy"]


@pytest.mark.parametrize("name", ALL)
def test_no_data_is_a_clear_error(name: str) -> None:
    obs = make_observer(name)
    with pytest.raises(InvalidInputError, match="observed no data"):
        obs.clip_range()
    with pytest.raises(InvalidInputError, match="observed no data"):
        obs.qparams(IntType(8, True))
    obs.observe(torch.empty(0, 4))  # empty batches are skipped, not counted
    with pytest.raises(InvalidInputError, match="observed no data"):
        obs.clip_range()


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_batches_are_rejected(name: str, bad: float) -> None:
    obs = make_observer(name)
    x = torch.randn(10)
    x[3] = bad
    with pytest.raises(InvalidInputError, match="NaN"):
        obs.observe(x)
    assert obs.num_batches == 0


@pytest.mark.parametrize("name", PER_CHANNEL)
def test_channel_count_and_axis_are_checked(name: str) -> None:
    obs = make_observer(name, axis=1)
    obs.observe(torch.randn(2, 3, 4))
    with pytest.raises(InvalidInputError, match="3 channel"):
        obs.observe(torch.randn(2, 5, 4))
    with pytest.raises(InvalidInputError, match="no such axis"):
        obs.observe(torch.randn(6))
    obs.observe(torch.randn(7, 3, 1))  # other dims may change
    assert obs.num_batches == 2


@pytest.mark.parametrize("name", PER_CHANNEL)
def test_per_channel_shapes_and_read_only(name: str) -> None:
    obs = make_observer(name, axis=-1)
    x = torch.randn(8, 5, 6)
    x_copy = x.clone()
    obs.observe(x)
    assert torch.equal(x, x_copy)
    lo, hi = obs.clip_range(symmetric=False)
    assert lo.shape == hi.shape == (6,) and lo.dtype == torch.float32
    assert bool((lo <= hi).all())
    assert bool((lo >= x.amin(dim=(0, 1)) - 1e-6).all())
    assert bool((hi <= x.amax(dim=(0, 1)) + 1e-6).all())
    qp = obs.qparams(IntType(4, False), symmetric=False, form="zero_point")
    assert qp.granularity == PerAxis(-1) and qp.zero_point.shape == (6,)


@pytest.mark.parametrize("name", ALL)
def test_per_tensor_scalars_and_reset(name: str) -> None:
    obs = make_observer(name)
    x = torch.randn(4, 4) * 3
    obs.observe(x)
    lo, hi = obs.clip_range()
    assert lo.shape == hi.shape == () and float(lo) == -float(hi) > -float(x.abs().max()) - 1e-6
    qp = obs.qparams(IntType(8, True))
    assert qp.scale.shape == () and qp.symmetric
    obs.reset()
    assert obs.num_batches == 0
    with pytest.raises(InvalidInputError):
        obs.clip_range()


@pytest.mark.parametrize("name", ALL)
def test_constant_zero_data_gives_finite_params(name: str) -> None:
    obs = make_observer(name)
    obs.observe(torch.zeros(100))
    qp = obs.qparams(IntType(8, True))
    assert torch.isfinite(qp.scale).all() and float(qp.scale) > 0


def test_registry_errors_list_known_names() -> None:
    with pytest.raises(InvalidSpecError, match=r"unknown observer 'kl'.*minmax.*entropy"):
        make_observer("kl")
    with pytest.raises(InvalidSpecError, match="bad options"):
        make_observer("minmax", percentile=99.0)
    with pytest.raises(LowbitError, match=r"needs a torch\.Tensor"):
        make_observer("minmax").observe([1.0, 2.0])  # type: ignore[arg-type]
