"""MSE-optimal clipping: the clip range whose quantization error on the data is smallest.

Clipping trades rounding error inside the range (smaller scale) against clipping error of
the values outside it; with outliers the best range is far below max|x|. The error of each
candidate range is measured with the real quantizer (``formats.affine.fake_quantize``) on
the bounded histogram of the observed values, each bin's count placed at its centre. That
blurs the error of a single candidate when a quantization step is narrower than a bin, but
the error curve is flat near its minimum: on Gaussian, Laplace, uniform and
Gaussian-with-outliers data at 3, 4 and 8 bits the chosen range's true MSE was within 0.1 %
of a 600-point brute-force search on the raw data (bins=2048; 4 points per bin gained
nothing measurable and cost 4x).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from lowbit.errors import InvalidSpecError
from lowbit.formats.affine import AsymmetricForm, choose_qparams, fake_quantize
from lowbit.formats.granularity import PerAxis
from lowbit.formats.qtypes import IntType
from lowbit.observers.histogram import HistogramObserver

# The most histogram bins evaluated at once: channels are searched in chunks so that memory
# stays bounded for many channels.
_CHUNK_ELEMENTS = 1 << 22


class MSEObserver(HistogramObserver):
    """Search the clip range that minimises the mean squared quantization error.

    Symmetric: L = f·max|x|. The fractions f tried are ``num_candidates`` values spaced
    geometrically in [min_fraction, 1] (so 4-bit optima near 0.05·max|x| are found as finely
    as 8-bit ones near 0.5·max|x|), then ``num_candidates`` more between the two coarse
    neighbours of each channel's best. Asymmetric: the range shrinks toward the exact mean m,
    (m + f·(min - m), m + g·(max - m)), searched first with f = g, then f alone, then g alone
    (coordinate search: 3 searches instead of one over every (f, g) pair). Ties go to the
    wider range.

    ``clip_range()`` searches for an int of ``bits`` bits (restricted symmetric or offset
    asymmetric); ``qparams(qtype, ...)`` searches for exactly the grid it returns.

    Args:
        axis: None for per-tensor, or the channel axis for per-channel statistics.
        bits: bit width the clip range is optimised for (``clip_range`` only).
        num_candidates: clip fractions per search stage (coarse, then fine).
        min_fraction: smallest fraction of the range tried, in (0, 1].
        bins: bins of |x| in the histogram the error is measured on.
    """

    def __init__(
        self,
        axis: int | None = None,
        *,
        bits: int = 8,
        num_candidates: int = 32,
        min_fraction: float = 1e-3,
        bins: int = 2048,
    ) -> None:
        if not 2 <= bits <= 8:
            raise InvalidSpecError(f"MSEObserver supports 2 to 8 bits, got {bits}")
        if num_candidates < 2:
            raise InvalidSpecError(f"num_candidates must be >= 2, got {num_candidates}")
        if not 0.0 < min_fraction <= 1.0:
            raise InvalidSpecError(f"min_fraction must be in (0, 1], got {min_fraction}")
        super().__init__(axis, bins=bins)
        self.bits = bits
        self.num_candidates = num_candidates
        self.min_fraction = min_fraction

    def _init_kwargs(self) -> dict:
        return {
            "axis": self.axis,
            "bits": self.bits,
            "num_candidates": self.num_candidates,
            "min_fraction": self.min_fraction,
            "bins": self.bins,
        }

    def _clip_range(self, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
        return self._clip_for(IntType(self.bits, symmetric), symmetric, True, "offset")

    def _fractions(self, device: torch.device) -> torch.Tensor:
        lo = torch.log10(torch.tensor(self.min_fraction, dtype=torch.float64))
        # Largest first: ties go to the candidate that clips least.
        fractions = torch.logspace(0.0, float(lo), self.num_candidates, dtype=torch.float64)
        return fractions.to(device=device, dtype=torch.float32)

    def _clip_for(
        self, qtype: IntType, symmetric: bool, restricted: bool, form: AsymmetricForm
    ) -> tuple[torch.Tensor, torch.Tensor]:
        hist, lo, hi = self._stats()
        quant = {"qtype": qtype, "symmetric": symmetric, "restricted": restricted, "form": form}
        fractions = self._fractions(lo.device)
        width = hist.radius / hist.bins
        # A symmetric grid quantizes x and -x alike: measure its error on |x|.
        counts = hist.abs_counts() if symmetric else hist.counts
        start = torch.zeros_like(width) if symmetric else -hist.radius
        amax = torch.maximum(-lo, hi)
        mean = self.mean().clamp(min=lo, max=hi)
        chunk = max(1, _CHUNK_ELEMENTS // counts.shape[1])
        out_lo, out_hi = [], []
        for first in range(0, counts.shape[0], chunk):
            rows = slice(first, first + chunk)
            search = _Search(counts[rows], width[rows], start[rows], fractions, quant)
            if symmetric:
                bound = amax[rows]
                f = search.best(lambda f, b=bound: (-f * b, f * b))
                out_lo.append(-f * bound)
                out_hi.append(f * bound)
                continue
            m, below, above = mean[rows], lo[rows] - mean[rows], hi[rows] - mean[rows]
            f = search.best(lambda f, m=m, b=below, a=above: (m + f * b, m + f * a))
            g = f
            f = search.best(lambda f, m=m, b=below, a=above, g=g: (m + f * b, m + g * a), keep=f)
            g = search.best(lambda g, m=m, b=below, a=above, f=f: (m + f * b, m + g * a), keep=g)
            out_lo.append(m + f * below)
            out_hi.append(m + g * above)
        return torch.cat(out_lo), torch.cat(out_hi)


ClipOf = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class _Search:
    """Error of candidate clip ranges on a chunk of channels' histograms.

    Every bin is represented by its centre carrying its count; bins empty in every channel
    of the chunk are dropped (they add nothing to any error).
    """

    def __init__(
        self,
        counts: torch.Tensor,
        width: torch.Tensor,
        start: torch.Tensor,
        fractions: torch.Tensor,
        quant: dict,
    ) -> None:
        keep = counts.sum(dim=0) > 0
        centres = torch.arange(counts.shape[1], device=counts.device)[keep] + 0.5
        self.points = start[:, None] + centres[None, :] * width[:, None]
        self.weights = counts[:, keep].float()
        self.fractions = fractions
        self.quant = quant

    def error(self, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        """Weighted squared error per channel (float64) of quantizing with clip (lo, hi)."""
        rows = self.points.shape[0]
        lo, hi = lo.expand(rows), hi.expand(rows)
        # choose_qparams only needs the shape: give it one element per channel.
        dummy = self.points.new_zeros(rows, 1)
        qp = choose_qparams(dummy, granularity=PerAxis(0), clip=(lo, hi), **self.quant)
        err = fake_quantize(self.points, qp) - self.points
        return err.square_().mul_(self.weights).sum(dim=1, dtype=torch.float64)

    def best(self, clip_of: ClipOf, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Per channel, the fraction whose clip range ``clip_of(f)`` has the least error:
        the coarse grid (plus ``keep``, which wins ties), then a grid as fine between the
        coarse neighbours of each channel's best."""
        rows = self.points.shape[0]
        cands = [f.expand(rows) for f in self.fractions]
        if keep is not None:
            cands.insert(0, keep)
        best_f, best_err = self._pick(clip_of, cands)
        ratio = float(self.fractions[0] / self.fractions[1])
        if ratio <= 1.0:  # min_fraction == 1: nothing to refine
            return best_f
        steps = torch.linspace(-1.0, 1.0, len(self.fractions), device=best_f.device)
        fine_f, fine_err = self._pick(clip_of, [(best_f * ratio**s).clamp(max=1.0) for s in steps])
        return torch.where(fine_err < best_err, fine_f, best_f)

    def _pick(self, clip_of: ClipOf, cands: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        errors = torch.stack([self.error(*clip_of(f)) for f in cands])
        best = errors.argmin(dim=0)  # the first minimum: earlier candidates win ties
        return torch.stack(cands).gather(0, best[None])[0], errors.gather(0, best[None])[0]
