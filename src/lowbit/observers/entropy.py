"""Entropy (KL-divergence) calibration, TensorRT's algorithm for int8 activations.

From S. Migacz, "8-bit Inference with TensorRT" (GTC 2017), in the form MXNet's
``_get_optimal_threshold`` and ONNX Runtime's ``get_entropy_threshold`` implement it:
take the histogram of |x| (2048 bins); for every threshold of i bins (i from the number of
quantized levels 2^(b-1) to 2048):

* P = bins [0, i), with every count beyond the threshold added to bin i - 1 (clipping
  moves outliers onto the threshold);
* Q = bins [0, i) merged into 2^(b-1) groups of i // 2^(b-1) bins (the remainder joins the
  last group), each group's count spread evenly back over the group's bins that are non-zero
  in P (and kept zero where P is zero);
* both smoothed (zero bins get eps = 1e-4, taken from the non-zero ones) and
  KL(P || Q) = Σ p·log(p/q) of the normalised distributions.

The threshold is the upper edge i·w of the best i (bin width w). Q is kept in float (ONNX
Runtime truncates it to integers; MXNet does not).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from lowbit.errors import InvalidSpecError
from lowbit.observers.histogram import HistogramObserver

_EPS = 1e-4


class EntropyObserver(HistogramObserver):
    """Clip range that minimises KL(P || Q) between the |x| histogram and its quantized
    version (TensorRT entropy calibration, see the module docstring).

    Per-tensor only, like TensorRT's calibrator: per-channel KL on a few thousand values per
    channel is noisy; use PercentileObserver or MSEObserver for per-channel ranges.
    ``clip_range(symmetric=True)`` is (-T, T); asymmetric is [max(min, -T), min(max, T)],
    e.g. [0, T] after a ReLU. Like TensorRT's, the method assumes data around zero (or
    one-sided from zero): for data far from zero (say all in [5, 6]) the |x| histogram says
    little and MSEObserver or PercentileObserver give far better ranges.

    Args:
        axis: must be None.
        bits: quantized bits; the search merges into 2^(bits-1) levels (128 for int8), or
            2^bits for an asymmetric range over one-sided data.
        bins: bins of |x| (TensorRT uses 2048); at least 2^(bits-1).
    """

    def __init__(self, axis: int | None = None, *, bits: int = 8, bins: int = 2048) -> None:
        if axis is not None:
            raise InvalidSpecError(
                "EntropyObserver is per-tensor only (TensorRT's KL calibration is per-tensor); "
                "use axis=None, or PercentileObserver/MSEObserver for per-channel ranges"
            )
        if not 2 <= bits <= 8:
            raise InvalidSpecError(f"EntropyObserver supports 2 to 8 bits, got {bits}")
        if bins < 1 << (bits - 1):
            raise InvalidSpecError(
                f"bins ({bins}) must be at least 2^(bits-1) = {1 << (bits - 1)} levels"
            )
        super().__init__(None, bins=bins)
        self.quant_bits = bits

    def _init_kwargs(self) -> dict:
        return {"axis": self.axis, "bits": self.quant_bits, "bins": self.bins}

    def threshold(self, levels: int | None = None) -> torch.Tensor:
        """T, the |x| threshold with the least KL divergence (float32 scalar), for
        ``levels`` quantization levels over [0, T] (default 2^(bits-1), a signed grid)."""
        self._require_data()
        hist, lo, hi = self._stats()
        counts = hist.abs_counts()[0].cpu().numpy().astype(np.float64)
        width = float(hist.radius[0]) / hist.bins
        i = kl_threshold_bins(counts, levels or 1 << (self.quant_bits - 1))
        amax = torch.maximum(-lo, hi).reshape(())
        return torch.minimum(torch.tensor(i * width, device=amax.device), amax)

    def _clip_range(self, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
        _, lo, hi = self._stats()
        one_sided = bool(lo >= 0) or bool(hi <= 0)
        # An asymmetric grid over one-sided data (after a ReLU) spends all 2^bits codes on
        # [0, T]; KL with only 2^(bits-1) levels would clip twice as hard as needed.
        levels = 1 << self.quant_bits if (one_sided and not symmetric) else None
        t = self.threshold(levels)
        if symmetric:
            return -t, t
        lower = torch.maximum(lo, -t)
        # Data entirely beyond T on one side would give lower > upper: keep the range valid.
        return lower, torch.maximum(torch.minimum(hi, t), lower)


def _smooth(p: np.ndarray) -> np.ndarray | None:
    """Give zero bins eps, taken evenly from the non-zero ones (MXNet's
    ``_smooth_distribution``); None when that is impossible (all zero, or a bin would go
    non-positive), which scores the candidate as infinitely bad."""
    zeros = p == 0
    n_zeros = int(zeros.sum())
    n_nonzeros = p.size - n_zeros
    if n_nonzeros == 0:
        return None
    out = p + np.where(zeros, _EPS, -_EPS * n_zeros / n_nonzeros)
    return out if bool((out > 0).all()) else None


def kl_threshold_bins(counts: np.ndarray, levels: int) -> int:
    """The number of bins i (levels <= i <= len(counts)) whose threshold minimises
    KL(P || Q) for the |x| histogram ``counts`` (see the module docstring)."""
    n = counts.size
    suffix = np.concatenate([np.cumsum(counts[::-1])[::-1], [0.0]])  # suffix[i] = Σ counts[i:]
    best_i, best_kl = n, math.inf
    for i in range(levels, n + 1):
        sliced = counts[:i]
        p = sliced.copy()
        p[-1] += suffix[i]
        merged = i // levels
        main = levels * merged
        groups = sliced[:main].reshape(levels, merged).sum(axis=1)
        groups[-1] += sliced[main:].sum()
        # Group index of every bin (the remainder belongs to the last group).
        group_of = np.minimum(np.arange(i) // merged, levels - 1)
        nonzero = p != 0
        norm = np.bincount(group_of, weights=nonzero, minlength=levels)
        q = np.where(nonzero, groups[group_of] / np.maximum(norm[group_of], 1), 0.0)
        ps, qs = _smooth(p), _smooth(q)
        if ps is None or qs is None:
            continue
        ps, qs = ps / ps.sum(), qs / qs.sum()
        kl = float(np.sum(ps * np.log(ps / qs)))
        if kl < best_kl:
            best_i, best_kl = i, kl
    return best_i
