"""The mixed-precision knapsack: exact where the grid is fine enough, never over budget."""

from __future__ import annotations

import itertools
import random

import pytest

from lowbit.algorithms.allocation import Choice, allocate
from lowbit.errors import InvalidInputError


def _problem(seed: int, layers: int = 5) -> dict[str, list[Choice]]:
    rng = random.Random(seed)
    return {
        f"l{i}": [Choice(f"f{k}", rng.randint(1, 60), rng.random()) for k in range(3)]
        for i in range(layers)
    }


def _brute_force(layers: dict[str, list[Choice]]) -> list[tuple[int, float]]:
    return [
        (sum(c.nbytes for c in combo), sum(c.loss for c in combo))
        for combo in itertools.product(*layers.values())
    ]


@pytest.mark.parametrize("seed", range(20))
def test_byte_budget_gives_the_least_loss_brute_force_finds(seed: int) -> None:
    layers = _problem(seed)
    every = _brute_force(layers)
    budget = sorted(b for b, _ in every)[len(every) // 3]
    result = allocate(layers, max_bytes=budget)
    best = min(loss for b, loss in every if b <= budget)
    assert result.nbytes <= budget
    assert result.loss == pytest.approx(best)
    assert result.nbytes == sum(c.nbytes for c in result.choices.values())


@pytest.mark.parametrize("seed", range(20))
def test_loss_budget_gives_the_fewest_bytes_brute_force_finds(seed: int) -> None:
    layers = _problem(seed)
    every = _brute_force(layers)
    max_loss = sorted(loss for _, loss in every)[len(every) // 2]
    result = allocate(layers, max_loss=max_loss)
    assert result.loss <= max_loss
    assert result.nbytes == min(b for b, loss in every if loss <= max_loss)


def test_a_coarse_grid_stays_within_the_budget() -> None:
    rng = random.Random(7)
    layers = {
        f"l{i}": [Choice(f"f{k}", rng.randint(1000, 90_000), rng.random()) for k in range(4)]
        for i in range(40)
    }
    for budget in (1_000_000, 1_800_000, 2_500_000):
        result = allocate(layers, max_bytes=budget, units=64)  # units of ~20 KB
        assert result.nbytes <= budget


def test_impossible_budgets_name_the_nearest_one() -> None:
    layers = _problem(3)
    smallest = sum(min(c.nbytes for c in cs) for cs in layers.values())
    with pytest.raises(InvalidInputError, match=f"{smallest:,} bytes"):
        allocate(layers, max_bytes=smallest - 1)
    least = sum(min(c.loss for c in cs) for cs in layers.values())
    with pytest.raises(InvalidInputError, match="least reachable"):
        allocate(layers, max_loss=least / 2)
    with pytest.raises(InvalidInputError, match="exactly one"):
        allocate(layers)
