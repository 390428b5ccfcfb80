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
