"""SquaresObserver: per input column, Σx² and the number of rows, llama.cpp's imatrix statistic.

llama-imatrix (tools/imatrix/imatrix.cpp ``collect_imatrix``) adds x_j² of every row (token)
of a matmul's input to ``in_sum2[j]`` and the number of rows to ``counts``; llama-quantize
weights each column's rounding error by in_sum2[j] / counts (``load_imatrix``). For a Linear
layer y = xWᵀ that mean E[x_j²] is the diagonal of the Hessian GPTQ uses (up to a factor 2).

Sums are kept in float64, so the mean does not depend on how the rows were split into
batches (llama.cpp sums in float32, row by row). Like ``HessianObserver`` it gives no clip
range; ``ObserverHook(layer, SquaresObserver(), on="input")`` feeds it a layer's inputs.
"""

from __future__ import annotations

import torch

from lowbit.errors import InvalidInputError
from lowbit.formats.checks import check_finite


class SquaresObserver:
    """Σ x_j² and the row count over inputs x of shape (..., K)."""

    def __init__(self) -> None:
        self.num_rows = 0
        self._sum: torch.Tensor | None = None

    def reset(self) -> None:
        """Forget every observed batch."""
        self.num_rows = 0
        self._sum = None

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        """Add one batch of inputs (..., K); ``x`` is only read. Empty batches are skipped.

        Raises InvalidInputError for a non-tensor, a 0-d tensor, NaN/Inf or a K that differs
        from earlier batches.
        """
        if not isinstance(x, torch.Tensor) or x.dim() == 0 or x.is_complex():
            raise InvalidInputError(
                "SquaresObserver needs real inputs of shape (..., K), got "
                f"{type(x).__name__ if not isinstance(x, torch.Tensor) else tuple(x.shape)}"
            )
        check_finite(x, what="batch given to SquaresObserver")
        rows = x.detach().reshape(-1, x.shape[-1])
        if rows.shape[0] == 0:
            return
        if self._sum is not None and self._sum.numel() != rows.shape[1]:
            raise InvalidInputError(
                f"SquaresObserver saw rows of {self._sum.numel()} before, now {rows.shape[1]}; "
                "use one observer per layer"
            )
        sq = rows.to(torch.float64).square().sum(dim=0)
        self._sum = sq if self._sum is None else self._sum + sq
        self.num_rows += rows.shape[0]

    @property
    def sum_squares(self) -> torch.Tensor:
        """Σ x_j² over every observed row, float64 (K,) (llama-imatrix's ``in_sum2``)."""
        if self._sum is None:
            raise InvalidInputError(
                "SquaresObserver has observed no data yet; run calibration inputs through "
                "the layer first"
            )
        return self._sum

    def mean_squares(self) -> torch.Tensor:
        """E[x_j²] = Σ x_j² / rows as float32 (K,): the importance llama-quantize uses."""
        return (self.sum_squares / self.num_rows).to(torch.float32)
