"""Percentile clipping: ignore the rarest extreme values (e.g. the top 0.01 %)."""

from __future__ import annotations

import torch

from lowbit.errors import InvalidSpecError
from lowbit.observers.histogram import HistogramObserver


class PercentileObserver(HistogramObserver):
    """Clip range from a percentile of the observed values.

    Symmetric: L = the ``percentile`` of |x|, range (-L, L). Asymmetric: (the
    (100 - percentile) percentile of x, the ``percentile`` percentile of x). The statistic
    comes from the bounded histogram (``observers.histogram``), not from stored activations:
    the result is within one bin width (at most 2·max|x|/bins) of the exact percentile,
    and is clamped to the observed [min, max].

    Args:
        axis: None for per-tensor, or the channel axis for per-channel statistics.
        percentile: in [50, 100]; 100 is min/max clipping.
        bins: bins of |x| (the signed histogram has twice as many).
    """

    def __init__(
        self, axis: int | None = None, *, percentile: float = 99.99, bins: int = 2048
    ) -> None:
        if not 50.0 <= percentile <= 100.0:
            raise InvalidSpecError(
                f"percentile must be in [50, 100], got {percentile}; e.g. 99.99 clips the "
                "top 0.01 % of values"
            )
        super().__init__(axis, bins=bins)
        self.percentile = percentile

    def _init_kwargs(self) -> dict:
        return {"axis": self.axis, "percentile": self.percentile, "bins": self.bins}

    def _clip_range(self, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
        hist, lo, hi = self._stats()
        q = self.percentile / 100.0
        if symmetric:
            bound = torch.minimum(hist.quantile(q, absolute=True), torch.maximum(-lo, hi))
            return -bound, bound
        lower = hist.quantile(1.0 - q, absolute=False).clamp(min=lo, max=hi)
        upper = hist.quantile(q, absolute=False).clamp(min=lo, max=hi)
        return lower, upper
