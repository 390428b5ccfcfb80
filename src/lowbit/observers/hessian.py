"""HessianObserver: the layer-wise Hessian GPTQ needs, H = 2/n · Σ xᵀx over a Linear's inputs.

GPTQ (Frantar et al. 2022, arXiv:2210.17323) minimises ‖XWᵀ − XŴᵀ‖², whose Hessian with
respect to each weight row is H = 2XᵀX. Dividing by the number of input rows n keeps H on
the scale of one token, so the dampening (a fraction of mean(diag H)) means the same for
any amount of calibration data.

Memory stays K×K whatever the number of batches: each batch (..., K) is flattened to
(rows, K) and its xᵀx added to a running sum in ``dtype``; the 2/n factor is applied when
``hessian()`` is read, so the result does not depend on how the data was split into batches
(up to float summation order), nor on torch's thread count (``SUM_ROWS``). n counts rows
(tokens), not sequences: the reference implementation's per-sequence count only rescales
H, which GPTQ's relative dampening ignores.

This is not a range observer (it gives no clip range or QParams), but it has the same
``observe``/``reset`` shape, so ``lowbit.observers.ObserverHook(layer, HessianObserver(),
on="input")`` feeds it a layer's inputs.
"""

from __future__ import annotations

import logging

import torch

from lowbit.errors import InvalidInputError, InvalidSpecError
from lowbit.formats.checks import check_finite

logger = logging.getLogger(__name__)

# Rows per xᵀx product. With a long reduction (65536 rows, or 1024 rows of a narrow layer)
# MKL splits the sum over rows between threads, so H changed with torch's thread count and
# GPTQ codes with it; products over at most 512 rows are split over their outputs only,
# the same sum whatever the thread count (tests/test_algorithms/test_gptq.py, issue 11).
SUM_ROWS = 512


class HessianObserver:
    """Accumulates H = 2/n · Σ xᵀx over the inputs x (..., K) of a Linear layer.

    Args:
        in_features: K, the layer's input size; None takes it from the first batch.
        dtype: accumulation dtype, torch.float32 (as the GPTQ reference) or torch.float64
            (exact for any practical amount of data; twice the memory).
    """

    def __init__(self, in_features: int | None = None, *, dtype: torch.dtype = torch.float32):
        if dtype not in (torch.float32, torch.float64):
            raise InvalidSpecError(
                f"HessianObserver accumulates in torch.float32 or torch.float64, got {dtype}"
            )
        if in_features is not None and (not isinstance(in_features, int) or in_features < 1):
            raise InvalidSpecError(f"in_features must be a positive int, got {in_features!r}")
        self.in_features = in_features
        self.dtype = dtype
        self.num_batches = 0
        self.num_samples = 0
        self._sum: torch.Tensor | None = None

    def reset(self) -> None:
        """Forget every observed batch (keeps in_features and dtype)."""
        self.num_batches = 0
        self.num_samples = 0
        self._sum = None

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        """Add one batch of inputs of shape (..., K); ``x`` is only read.

        Raises InvalidInputError for NaN/Inf, a non-tensor, a 0-d tensor or a last dimension
        other than K. Empty batches (no rows) are skipped.
        """
        if not isinstance(x, torch.Tensor):
            raise InvalidInputError(
                f"HessianObserver.observe() needs a torch.Tensor, got {type(x).__name__}"
            )
        if x.dim() == 0 or x.is_complex():
            raise InvalidInputError(
                "HessianObserver needs real inputs of shape (..., in_features), got "
                f"{tuple(x.shape)} {x.dtype}"
            )
        k = x.shape[-1]
        if self.in_features is None:
            self.in_features = k
        elif k != self.in_features:
            raise InvalidInputError(
                f"HessianObserver expects inputs with last dimension {self.in_features} "
                f"(the layer's in_features) but got shape {tuple(x.shape)}; use one observer "
                "per layer and hook the layer's input"
            )
        x = x.detach()
        check_finite(x, what="batch given to HessianObserver")
        rows = x.reshape(-1, k).to(self.dtype)
        if rows.shape[0] == 0:
            logger.debug("HessianObserver skipped an empty batch of shape %s", tuple(x.shape))
            return
        if self._sum is None:
            self._sum = torch.zeros(k, k, dtype=self.dtype, device=rows.device)
        for chunk in rows.split(SUM_ROWS):
            self._sum.addmm_(chunk.T, chunk)
        self.num_samples += rows.shape[0]
        self.num_batches += 1

    def combine_processes(self) -> None:
        """Sum Σ xᵀx and the sample count over every torch.distributed process (each has
        observed its share of the calibration data); nothing without such a group."""
        from lowbit.observers.processes import all_reduce_, sum_count, world_size

        if world_size() == 1:
            return
        if self._sum is None:
            raise InvalidInputError(
                "this process observed no calibration data: give at least as many batches "
                "as processes"
            )
        all_reduce_(self._sum, "sum")
        self.num_samples = sum_count(self.num_samples)
        self.num_batches = sum_count(self.num_batches)

    def hessian(self) -> torch.Tensor:
        """H = 2/n · Σ xᵀx, a (K, K) tensor of ``dtype`` (a new tensor; safe to modify)."""
        if self._sum is None:
            raise InvalidInputError(
                "HessianObserver has observed no data yet; call observe() on at least one "
                "non-empty calibration batch of the layer's inputs first"
            )
        return self._sum * (2.0 / self.num_samples)

    def __repr__(self) -> str:
        return (
            f"HessianObserver(in_features={self.in_features!r}, dtype={self.dtype}, "
            f"num_samples={self.num_samples})"
        )
