"""Per-input-channel activation statistics for equivalence transforms (AWQ, SmoothQuant).

For activations of shape (..., K) the observer keeps, per channel j, the mean and the
maximum of |x_j| (memory O(K)), and optionally a bounded uniform sample of rows (tokens)
for losses that need real inputs, such as AWQ's scale and clip searches.

The row sample is bottom-k sampling: every row gets a pseudo-random key computed from its
global index (a 32-bit integer hash, a bijection, so keys never tie) and the ``sample_rows``
rows with the smallest keys are kept. The sample therefore does not depend on how the rows
were split into batches, on the device, or on torch's random state, only on ``seed``.
"""

from __future__ import annotations

import torch

from lowbit.errors import InvalidInputError, InvalidSpecError
from lowbit.observers.base import Observer

_MASK32 = 0xFFFFFFFF


def _row_keys(index: torch.Tensor, seed: int) -> torch.Tensor:
    """A 32-bit hash of each row index (int64 in, int64 keys in [0, 2^32) out).

    Every step (add mod 2^32, xor-shift, multiply by an odd constant mod 2^32) is invertible
    on 32-bit integers, so distinct indices below 2^32 get distinct keys. Products stay below
    2^59, so int64 arithmetic never overflows. (The "hash32" mixer of Thomas Mueller.)
    """
    x = (index + (seed * 0x9E3779B9)) & _MASK32
    x = ((x >> 16) ^ x) * 0x45D9F3B & _MASK32
    x = ((x >> 16) ^ x) * 0x45D9F3B & _MASK32
    return (x >> 16) ^ x


class ChannelStatsObserver(Observer):
    """Per-channel mean |x| and max |x| of activations, plus an optional row sample.

    ``mean_abs`` is AWQ's activation salience (llm-awq's ``get_act_scale``) and ``max_abs``
    is SmoothQuant's max|X_j|. As an ``Observer`` it also gives per-channel clip ranges
    (symmetric: ±max|x|, asymmetric: (min, max)) and works with ``ObserverHook``.

    Args:
        axis: the channel axis (default -1: activations (..., K) of a Linear layer).
        sample_rows: keep a uniform sample of at most this many rows (0: none). A row is one
            index of every axis but the channel axis (a token for (..., K) activations).
        seed: selects which rows are sampled (see the module docstring).
    """

    def __init__(self, axis: int | None = -1, *, sample_rows: int = 0, seed: int = 0) -> None:
        if axis is None:
            raise InvalidSpecError(
                "ChannelStatsObserver needs a channel axis (e.g. axis=-1 for (..., K) "
                "activations); use MinMaxObserver for per-tensor statistics"
            )
        if sample_rows < 0:
            raise InvalidSpecError(f"sample_rows must be >= 0, got {sample_rows}")
        super().__init__(axis)
        self.sample_rows = sample_rows
        self.seed = seed
        self.num_rows = 0
        self._sum_abs: torch.Tensor | None = None
        self._max_abs: torch.Tensor | None = None
        self._min: torch.Tensor | None = None
        self._max: torch.Tensor | None = None
        self._sample: torch.Tensor | None = None
        self._sample_keys: torch.Tensor | None = None
        self._sample_index: torch.Tensor | None = None
        self._calls = 0

    def _init_kwargs(self) -> dict:
        return {"axis": self.axis, "sample_rows": self.sample_rows, "seed": self.seed}

    def _update(self, flat: torch.Tensor) -> None:
        # flat is (K, rows); rows are in the row-major order of the batch's other axes.
        absval = flat.abs()
        # float64 sums: the mean is then independent of how rows were split into batches
        # (up to float64 rounding, far below float32 resolution).
        sum_abs = absval.sum(dim=1, dtype=torch.float64)
        max_abs, lo, hi = absval.amax(dim=1), flat.amin(dim=1), flat.amax(dim=1)
        if self._sum_abs is None:
            self._sum_abs, self._max_abs, self._min, self._max = sum_abs, max_abs, lo, hi
        else:
            assert self._max_abs is not None and self._min is not None and self._max is not None
            self._sum_abs = self._sum_abs + sum_abs
            self._max_abs = torch.maximum(self._max_abs, max_abs)
            self._min = torch.minimum(self._min, lo)
            self._max = torch.maximum(self._max, hi)
        if self.sample_rows:
            self._update_sample(flat.T)
        self.num_rows += flat.shape[1]

    def _update_sample(self, rows: torch.Tensor) -> None:
        from lowbit.observers.processes import shard_row_start

        start = shard_row_start(self._calls, rows.shape[0])
        self._calls += 1
        first = self.num_rows if start is None else start  # the row's number in all the data
        index = torch.arange(first, first + rows.shape[0], device=rows.device)
        keys = _row_keys(index, self.seed)
        if self._sample is not None:
            assert self._sample_keys is not None and self._sample_index is not None
            rows = torch.cat([self._sample, rows])
            keys = torch.cat([self._sample_keys, keys])
            index = torch.cat([self._sample_index, index])
        if keys.numel() > self.sample_rows:
            keep = torch.topk(keys, self.sample_rows, largest=False).indices
            rows, keys, index = rows[keep], keys[keep], index[keep]
        self._sample, self._sample_keys, self._sample_index = rows.clone(), keys, index

    def combine_processes(self) -> None:
        """Combine the statistics over every torch.distributed process (sums and row counts
        added, extremes taken, row samples merged); nothing without such a group. Each
        process numbered its rows as in the whole data (processes.set_shard_rows), so the
        merged sample, the rows with the smallest keys of all, is one process's sample."""
        from lowbit.observers.processes import (
            all_gather_rows,
            all_reduce_,
            sum_count,
            world_size,
        )

        if world_size() == 1:
            return
        self._require_data()
        assert self._sum_abs is not None and self._max_abs is not None
        assert self._min is not None and self._max is not None
        all_reduce_(self._sum_abs, "sum")
        all_reduce_(self._max_abs, "max")
        all_reduce_(self._min, "min")
        all_reduce_(self._max, "max")
        self.num_rows = sum_count(self.num_rows)
        if self._sample is not None:
            assert self._sample_keys is not None and self._sample_index is not None
            rows = all_gather_rows(self._sample, self.sample_rows)
            keys = all_gather_rows(self._sample_keys, self.sample_rows)
            index = all_gather_rows(self._sample_index, self.sample_rows)
            keep = torch.topk(keys, min(self.sample_rows, keys.numel()), largest=False).indices
            self._sample, self._sample_keys, self._sample_index = (
                rows[keep],
                keys[keep],
                index[keep],
            )

    def _clip_range(self, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
        assert self._max_abs is not None and self._min is not None and self._max is not None
        if symmetric:
            return -self._max_abs, self._max_abs
        return self._min, self._max

    @property
    def mean_abs(self) -> torch.Tensor:
        """mean |x_j| over every observed row, float32 of shape (K,)."""
        self._require_data()
        assert self._sum_abs is not None
        return (self._sum_abs / self.num_rows).to(torch.float32)

    @property
    def max_abs(self) -> torch.Tensor:
        """max |x_j| over every observed row, float32 of shape (K,)."""
        self._require_data()
        assert self._max_abs is not None
        return self._max_abs

    @property
    def sample(self) -> torch.Tensor:
        """The sampled rows, float32 of shape (min(sample_rows, num_rows), K), in the order
        they were observed."""
        if not self.sample_rows:
            raise InvalidInputError(
                "this ChannelStatsObserver keeps no row sample; create it with sample_rows=N"
            )
        self._require_data()
        assert self._sample is not None and self._sample_index is not None
        return self._sample[torch.argsort(self._sample_index)]
