"""Min/max observers: the range the data actually spans (running or moving average)."""

from __future__ import annotations

import torch

from lowbit.errors import InvalidSpecError
from lowbit.observers.base import Observer


def _minmax_clip(
    lo: torch.Tensor, hi: torch.Tensor, symmetric: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    if not symmetric:
        return lo, hi
    bound = torch.maximum(lo.abs(), hi.abs())
    return -bound, bound


class MinMaxObserver(Observer):
    """Running minimum and maximum over every observed batch.

    ``clip_range(symmetric=True)`` is (-L, L) with L = max|x|; asymmetric is (min, max).

    Args:
        axis: None for per-tensor, or the channel axis for per-channel statistics.
    """

    def __init__(self, axis: int | None = None) -> None:
        super().__init__(axis)
        self.min_val: torch.Tensor | None = None
        self.max_val: torch.Tensor | None = None

    def _update(self, flat: torch.Tensor) -> None:
        lo, hi = flat.amin(dim=1), flat.amax(dim=1)
        if self.min_val is None or self.max_val is None:
            self.min_val, self.max_val = lo, hi
            return
        self.min_val = torch.minimum(self.min_val, lo.to(self.min_val.device))
        self.max_val = torch.maximum(self.max_val, hi.to(self.max_val.device))

    def _clip_range(self, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.min_val is not None and self.max_val is not None
        return _minmax_clip(self.min_val, self.max_val, symmetric)


class MovingAverageMinMaxObserver(MinMaxObserver):
    """Exponential moving average of each batch's min and max, as torch.ao's
    MovingAverageMinMaxObserver: the first batch sets the range, later batches move it by
    ``min += c·(batch_min - min)`` (same for max). Suits activations seen during QAT, where a
    single outlier batch should not fix the range forever.

    Args:
        axis: None for per-tensor, or the channel axis for per-channel statistics.
        averaging_constant: c in (0, 1]; 1 keeps only the last batch.
    """

    def __init__(self, axis: int | None = None, *, averaging_constant: float = 0.01) -> None:
        if not 0.0 < averaging_constant <= 1.0:
            raise InvalidSpecError(
                f"averaging_constant must be in (0, 1], got {averaging_constant}; "
                "0.01 is the usual value"
            )
        super().__init__(axis)
        self.averaging_constant = averaging_constant

    def _init_kwargs(self) -> dict:
        return {"axis": self.axis, "averaging_constant": self.averaging_constant}

    def _update(self, flat: torch.Tensor) -> None:
        lo, hi = flat.amin(dim=1), flat.amax(dim=1)
        if self.min_val is None or self.max_val is None:
            self.min_val, self.max_val = lo, hi
            return
        c = self.averaging_constant
        self.min_val = self.min_val + c * (lo.to(self.min_val.device) - self.min_val)
        self.max_val = self.max_val + c * (hi.to(self.max_val.device) - self.max_val)
