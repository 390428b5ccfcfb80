"""A bounded-memory histogram of everything observed, shared by the Percentile, MSE and
Entropy observers.

Memory is ``channels x 2·bins`` int64 counts whatever the amount of calibration data, so
calibrating on millions of activations never keeps them all.

Layout: per channel, ``2·bins`` equal bins over [-R, R], where R starts just above the
first batch's max|x| (by a factor 1 + 2^-10, so no value sits on the top edge) and doubles
(R, 2R, 4R, ...) whenever a batch holds a value >= R. Doubling makes re-binning exact: bins
(2m, 2m+1) of the old histogram are exactly bin bins/2 + m of the new one, so the counts never
get smeared by interpolation (torch.ao's HistogramObserver, whose range follows min/max
exactly, has to interpolate). The price is resolution: a bin is R/bins wide with
R < 2·max|x| (about), i.e. at most 2·max|x|/bins. Folding the two halves gives the
histogram of |x| with ``bins`` bins over [0, R] (TensorRT's entropy calibration uses 2048).
The same symmetric layout serves asymmetric statistics (lower/upper percentiles), at half
the resolution for data that is all on one side of zero.
"""

from __future__ import annotations

import math

import torch

from lowbit.errors import InvalidSpecError
from lowbit.observers.base import Observer

# A fresh range is this much wider than the first max|x|, so that no value lies on the top
# edge (a value there would be clamped into the top bin and land one bin low after growth).
_HEADROOM = 1.0 + 2.0**-10


class GrowingHistogram:
    """Per-channel histograms over [-R, R] with power-of-two range growth (see module doc).

    Attributes:
        counts: int64 (channels, 2·bins).
        radius: float32 (channels,), R per channel; 0 while only zeros have been seen (their
            counts sit in bin ``bins``, the bin [0, R/bins), which stays true as R grows).
    """

    def __init__(self, channels: int, bins: int, device: torch.device) -> None:
        self.bins = bins
        self.counts = torch.zeros(channels, 2 * bins, dtype=torch.int64, device=device)
        self.radius = torch.zeros(channels, dtype=torch.float32, device=device)

    def add(self, flat: torch.Tensor) -> None:
        """Count the values of ``flat`` (channels, n), growing the range first if needed."""
        flat = flat.to(self.counts.device)
        self._grow(flat.abs().amax(dim=1))
        channels, two_b = self.counts.shape
        radius = self.radius[:, None]
        pos = ((flat / torch.where(radius > 0, radius, 1.0) + 1.0) * self.bins).floor()
        idx = torch.where(radius > 0, pos.clamp(0, two_b - 1), float(self.bins)).long()
        idx = idx + torch.arange(channels, device=idx.device)[:, None] * two_b
        self.counts += torch.bincount(idx.reshape(-1), minlength=channels * two_b).reshape(
            channels, two_b
        )

    def _grow(self, amax: torch.Tensor) -> None:
        # Channels that saw only zeros take the new max directly: their counts are in the
        # bin of 0, which is bin `bins` for every R.
        fresh = self.radius == 0
        self.radius = torch.where(fresh, amax * _HEADROOM, self.radius)
        ratio = amax / torch.where(self.radius > 0, self.radius, 1.0)
        steps = torch.floor(torch.log2(ratio.clamp(min=0.5))).long() + 1
        # log2 in float32 can be off by one: make R·2^k the smallest that is > amax.
        steps += (self.radius * torch.exp2(steps.float()) <= amax).long()
        steps -= ((steps > 0) & (self.radius * torch.exp2(steps.float() - 1) > amax)).long()
        steps = torch.where(self.radius > 0, steps, 0)  # still all zeros: nothing to grow
        # After log2(2·bins) + 1 doublings everything already sits in the two centre bins.
        max_steps = int(steps.max()) if steps.numel() else 0
        for step in range(min(max_steps, int(math.log2(2 * self.bins)) + 2)):
            rows = steps > step
            old = self.counts[rows]
            merged = torch.zeros_like(old)
            half = self.bins // 2
            merged[:, half : half + self.bins] = old.reshape(old.shape[0], self.bins, 2).sum(-1)
            self.counts[rows] = merged
        self.radius = self.radius * torch.exp2(steps.float())

    def abs_counts(self) -> torch.Tensor:
        """Counts of |x|: (channels, bins) over [0, R], bin k = [k·R/bins, (k+1)·R/bins)."""
        b = self.bins
        return self.counts[:, b:] + self.counts[:, :b].flip(-1)

    def quantile(self, q: float, *, absolute: bool) -> torch.Tensor:
        """The q-quantile (0 <= q <= 1) per channel of x (or of |x|), interpolating linearly
        inside the bin where the cumulative count crosses q·total; error < one bin width."""
        counts = (self.abs_counts() if absolute else self.counts).double()
        width = (self.radius.double() / self.bins)[:, None]
        start = 0.0 if absolute else -self.radius.double()
        cdf = counts.cumsum(dim=1)
        target = (q * cdf[:, -1:]).clamp(min=0)
        k = torch.searchsorted(cdf, target).clamp(max=counts.shape[1] - 1)
        before = torch.where(k > 0, cdf.gather(1, (k - 1).clamp(min=0)), 0.0)
        in_bin = counts.gather(1, k)
        frac = torch.where(in_bin > 0, (target - before) / in_bin.clamp(min=1), 0.0)
        return (start + ((k + frac.clamp(0, 1)) * width).squeeze(1)).float()


class HistogramObserver(Observer):
    """Base of the histogram observers: a ``GrowingHistogram`` plus exact min, max and sum.

    Args:
        axis: None for per-tensor, or the channel axis for per-channel statistics.
        bins: bins of |x| (the signed histogram has twice as many); must be even.
    """

    def __init__(self, axis: int | None = None, *, bins: int = 2048) -> None:
        if bins < 2 or bins % 2:
            raise InvalidSpecError(f"bins must be an even number >= 2, got {bins}; 2048 is usual")
        super().__init__(axis)
        self.bins = bins
        self.hist: GrowingHistogram | None = None
        self.min_val: torch.Tensor | None = None
        self.max_val: torch.Tensor | None = None
        self.sum_val: torch.Tensor | None = None

    def _init_kwargs(self) -> dict:
        return {"axis": self.axis, "bins": self.bins}

    def _update(self, flat: torch.Tensor) -> None:
        if self.hist is None:
            self.hist = GrowingHistogram(flat.shape[0], self.bins, flat.device)
            self.min_val = flat.amin(dim=1)
            self.max_val = flat.amax(dim=1)
            self.sum_val = flat.double().sum(dim=1)
        else:
            assert self.min_val is not None and self.max_val is not None
            assert self.sum_val is not None
            flat = flat.to(self.hist.counts.device)
            self.min_val = torch.minimum(self.min_val, flat.amin(dim=1))
            self.max_val = torch.maximum(self.max_val, flat.amax(dim=1))
            self.sum_val = self.sum_val + flat.double().sum(dim=1)
        self.hist.add(flat)

    def _stats(self) -> tuple[GrowingHistogram, torch.Tensor, torch.Tensor]:
        assert self.hist is not None and self.min_val is not None and self.max_val is not None
        return self.hist, self.min_val, self.max_val

    def mean(self) -> torch.Tensor:
        """Exact mean of the observed values per channel (float32)."""
        self._require_data()
        assert self.hist is not None and self.sum_val is not None
        return (self.sum_val / self.hist.counts.sum(dim=1).double()).float()
