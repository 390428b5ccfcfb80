"""Combining calibration statistics across processes (torch.distributed).

When calibration data is split over several processes (`torchrun ... lowbit quantize`), each
process observes its share; the statistics an algorithm reads are then combined with
all-reduce over the default process group, so every process holds the statistics of all the
data and computes the same quantized weights. Without an initialized group of more than one
process every function here does nothing.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from lowbit.errors import InvalidInputError

# (first row, rows) in the whole calibration set of each batch this process observes, in
# order, while calibration is split over processes: row samples (AWQ) key rows by their
# number in the whole set, so every process samples as one process would.
_shard_rows: list[tuple[int, int]] | None = None


def world_size() -> int:
    """Processes in the default torch.distributed group (1 when none is initialized)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank in the default group (0 when none is initialized)."""
    return dist.get_rank() if world_size() > 1 else 0


def all_reduce_(t: torch.Tensor, op: str) -> torch.Tensor:
    """``t`` reduced in place over every process ("sum", "max" or "min"); returns ``t``."""
    if world_size() > 1:
        ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
        dist.all_reduce(t, op=ops[op])
    return t


def sum_count(n: int) -> int:
    """An integer count summed over every process."""
    if world_size() == 1:
        return n
    return int(all_reduce_(torch.tensor([n], dtype=torch.int64), "sum").item())


def join_from_environment() -> bool:
    """Join the process group torchrun describes in the environment (WORLD_SIZE > 1,
    MASTER_ADDR, ...) with the gloo backend (lowbit calibrates on CPU tensors); True when
    this run is one of several processes."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return True


def leave() -> None:
    """Leave the process group (after the last combined statistic)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def set_shard_rows(rows: list[tuple[int, int]] | None) -> None:
    """Declare (first row, rows) of each batch this process observes, in order (None: this
    process observes all the data, rows numbered as they come)."""
    global _shard_rows
    _shard_rows = rows


def shard_row_start(call: int, rows: int) -> int | None:
    """The number, in the whole calibration set, of the first of ``rows`` rows an observer
    sees in its ``call``-th batch; None when the data is not split over processes."""
    if _shard_rows is None:
        return None
    if call >= len(_shard_rows) or _shard_rows[call][1] != rows:
        raise InvalidInputError(
            "a layer saw other rows than its calibration batch's tokens, so its row sample "
            "cannot be combined across processes (AWQ); run it in one process"
        )
    return _shard_rows[call][0]


def all_gather_rows(t: torch.Tensor, capacity: int) -> torch.Tensor:
    """The rows of ``t`` (at most ``capacity``) of every process, concatenated in rank order."""
    if world_size() == 1:
        return t
    padded = torch.zeros((capacity, *t.shape[1:]), dtype=t.dtype)
    padded[: t.shape[0]] = t
    counts = [torch.zeros(1, dtype=torch.int64) for _ in range(world_size())]
    dist.all_gather(counts, torch.tensor([t.shape[0]], dtype=torch.int64))
    parts = [torch.empty_like(padded) for _ in range(world_size())]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(c)] for p, c in zip(parts, counts, strict=True)])
