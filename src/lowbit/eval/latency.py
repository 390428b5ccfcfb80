"""Latency measured the fair way on a shared machine: candidates interleaved round-robin
(A B C A B C ...) after warm-up, with the thread count pinned, medians reported."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping

import torch


def time_interleaved(
    cases: Mapping[str, Callable[[], object]],
    *,
    warmup: int = 3,
    repeats: int = 20,
    threads: int | None = 2,
) -> dict[str, list[float]]:
    """Seconds per call of each case, one sample per round, rounds interleaving all cases.

    ``threads`` pins ``torch.set_num_threads`` for the measurement (restored afterwards).
    """
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                for fn in cases.values():
                    fn()
            samples: dict[str, list[float]] = {name: [] for name in cases}
            for _ in range(repeats):
                for name, fn in cases.items():
                    start = time.perf_counter()
                    fn()
                    samples[name].append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    return samples


def median_ratio(baseline: list[float], candidate: list[float]) -> tuple[float, float, float]:
    """Speed of ``candidate`` relative to ``baseline`` per round: (median, min, max)."""
    ratios = [b / c for b, c in zip(baseline, candidate, strict=True) if c > 0]
    return statistics.median(ratios), min(ratios), max(ratios)
