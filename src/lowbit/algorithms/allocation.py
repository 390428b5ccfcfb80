"""Mixed precision as a multiple-choice knapsack: one format per layer, the least estimated
loss within a byte budget, or the fewest bytes within a loss budget.

Each layer offers choices (a format, its exact bytes, its estimated loss when only that
layer is quantized so). Losses are taken as additive, the usual first-order model of
mixed-precision search (HAWQ-V3, Dong et al. 2020; SqueezeLLM's Fisher weighting, Kim et al.
2023). The search is exact dynamic programming over a grid of byte units: each choice's bytes
are rounded *up* to a unit, so a returned allocation never exceeds the byte budget; the grid
only costs optimality, by at most one unit per layer (with 2^16 units and 200 layers, 0.3% of
the budget).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lowbit.errors import InvalidInputError

GRID_UNITS = 1 << 16  # byte units across the range of totals the budget allows


@dataclass(frozen=True)
class Choice:
    """One format a layer may take: its name, exact bytes, and estimated loss."""

    name: str
    nbytes: int
    loss: float


@dataclass(frozen=True)
class Allocation:
    """The chosen format per layer, with the totals the choice implies."""

    choices: dict[str, Choice]
    nbytes: int
    loss: float


def _check(layers: dict[str, list[Choice]]) -> None:
    for layer, choices in layers.items():
        if not choices:
            raise InvalidInputError(f"layer {layer!r} has no candidate format")
        for c in choices:
            if c.nbytes < 0 or not math.isfinite(c.loss) or c.loss < 0:
                raise InvalidInputError(
                    f"layer {layer!r}, {c.name}: bytes must be >= 0 and the loss finite and "
                    f">= 0 (got {c.nbytes} bytes, loss {c.loss})"
                )


def _frontier(
    layers: dict[str, list[Choice]], units: int, limit: int | None
) -> tuple[np.ndarray, list, int]:
    """Least total loss for every budget of 0, 1, 2, ... grid units above the cheapest total
    (up to ``limit`` bytes above it, or every total), the argmin table to trace choices back,
    and the unit size."""
    span = sum(max(c.nbytes for c in cs) - min(c.nbytes for c in cs) for cs in layers.values())
    if limit is not None:
        span = min(span, limit)
    unit = max(1, math.ceil(span / units))
    size = span // unit + len(layers) + 1  # rounding up adds at most one unit per layer
    best = np.zeros(size)
    picks = []
    for choices in layers.values():
        low = min(c.nbytes for c in choices)
        new = np.full(size, np.inf)
        pick = np.full(size, -1, dtype=np.int16)
        for k, c in enumerate(choices):
            shift = math.ceil((c.nbytes - low) / unit)
            if shift >= size:
                continue  # larger than any budget considered
            candidate = np.full(size, np.inf)
            candidate[shift:] = best[: size - shift] + c.loss
            better = candidate < new
            new[better] = candidate[better]
            pick[better] = k
        best = new
        picks.append(pick)
    return best, picks, unit


def _trace(layers: dict[str, list[Choice]], picks: list, at: int, unit: int) -> dict[str, Choice]:
    chosen: dict[str, Choice] = {}
    for (layer, choices), pick in zip(reversed(layers.items()), reversed(picks), strict=True):
        c = choices[int(pick[at])]
        chosen[layer] = c
        at -= math.ceil((c.nbytes - min(x.nbytes for x in choices)) / unit)
    return dict(reversed(chosen.items()))


def allocate(
    layers: dict[str, list[Choice]],
    *,
    max_bytes: int | None = None,
    max_loss: float | None = None,
    units: int = GRID_UNITS,
) -> Allocation:
    """One choice per layer.

    With ``max_bytes``: the least total estimated loss whose bytes stay within it. With
    ``max_loss``: the fewest bytes whose estimated loss stays within it (among those, the
    least loss). Raises InvalidInputError when no allocation fits, naming the nearest one.
    """
    if (max_bytes is None) == (max_loss is None):
        raise InvalidInputError("give exactly one of max_bytes and max_loss")
    _check(layers)
    floor = sum(min(c.nbytes for c in cs) for cs in layers.values())
    if max_bytes is not None:
        if max_bytes < floor:
            raise InvalidInputError(
                f"the budget of {max_bytes:,} bytes is below the smallest possible model "
                f"({floor:,} bytes with every layer in its smallest candidate); raise the "
                "target or add smaller candidate formats"
            )
        best, picks, unit = _frontier(layers, units, max_bytes - floor)
        at = min((max_bytes - floor) // unit, len(best) - 1)
        at = int(np.argmin(best[: at + 1]))  # the least loss at or under the budget
    else:
        best, picks, unit = _frontier(layers, units, None)
        fits = np.nonzero(best <= max_loss)[0]
        if len(fits) == 0:
            raise InvalidInputError(
                f"no allocation keeps the estimated loss within {max_loss:g} (the least "
                f"reachable with these candidates is {best.min():g}); raise --max-loss or add "
                "a more precise candidate (int8, float)"
            )
        at = int(fits[0])
    chosen = _trace(layers, picks, at, unit)
    return Allocation(
        chosen, sum(c.nbytes for c in chosen.values()), sum(c.loss for c in chosen.values())
    )
