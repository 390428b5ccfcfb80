"""One helper through which every slow call reports progress, so library code never prints.

Where progress is enabled (an interactive stderr, or LOWBIT_PROGRESS=1; LOWBIT_PROGRESS=0,
which ``lowbit ... --json`` sets, turns it off): on a terminal a rich bar with the rate,
elapsed time and an ETA; otherwise (a log file, a CI job) plain lines on
stderr, one per item, at most one a second. The ETA is the mean time per finished item
times the items left: rich's own estimate uses a 30-second speed window, which a step of
GPTQ (one transformer block, often longer) never fills, so it never showed.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TimeElapsedColumn,
)
from rich.text import Text

T = TypeVar("T")

LINE_INTERVAL_S = 1.0  # plain output: at most one line per interval (and always the last)


def progress_enabled() -> bool:
    """Progress shows on an interactive stderr, or when LOWBIT_PROGRESS=1 forces it."""
    forced = os.environ.get("LOWBIT_PROGRESS")
    if forced is not None:
        return forced == "1"
    return sys.stderr.isatty()


def eta_seconds(done: int, total: int | None, elapsed: float) -> float | None:
    """Seconds left: the mean time of the ``done`` items so far times the items left; None
    before the first item ends or without a total."""
    if total is None or done <= 0:
        return None
    return elapsed / done * max(total - done, 0)


def format_seconds(seconds: float | None) -> str:
    """ "1:02:03", "2:05" or "-:--" (unknown)."""
    if seconds is None:
        return "-:--"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_rate(done: int, elapsed: float) -> str:
    """ "12.5 it/s" for quick items, "15.0 s/it" for slow ones (a GPTQ block), "-" before
    the first item ends."""
    if done <= 0 or elapsed <= 0:
        return "-"
    per_second = done / elapsed
    return f"{per_second:.1f} it/s" if per_second >= 1 else f"{elapsed / done:.1f} s/it"


def progress_line(description: str, done: int, total: int | None, elapsed: float) -> str:
    """One plain progress line: "quantizing blocks 3/30, 15.0 s/it, elapsed 0:45, ETA 6:45"."""
    count = f"{done}/{total}" if total is not None else str(done)
    eta = format_seconds(eta_seconds(done, total, elapsed))
    rate = format_rate(done, elapsed)
    return f"{description} {count}, {rate}, elapsed {format_seconds(elapsed)}, ETA {eta}"


def _interactive() -> bool:
    return sys.stderr.isatty()


def track(
    items: Iterable[T], description: str, total: int | None = None, enabled: bool | None = None
) -> Iterator[T]:
    """Iterate over ``items``, reporting progress with ``description`` when enabled."""
    if not (progress_enabled() if enabled is None else enabled):
        yield from items
        return
    if not _interactive():
        yield from _plain_track(items, description, total)
        return
    columns = (
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(),
        TimeElapsedColumn(),
        _EtaColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)


def _plain_track(items: Iterable[T], description: str, total: int | None) -> Iterator[T]:
    started = last = time.perf_counter()
    for done, item in enumerate(items, start=1):
        yield item
        now = time.perf_counter()
        if now - last >= LINE_INTERVAL_S or done == total:
            print(progress_line(description, done, total, now - started), file=sys.stderr)
            last = now


class _RateColumn(ProgressColumn):
    """rich column: items per second, or seconds per item when slower (``format_rate``)."""

    def render(self, task: Task) -> Text:
        return Text(
            format_rate(int(task.completed), task.elapsed or 0.0), style="progress.data.speed"
        )


class _EtaColumn(ProgressColumn):
    """rich column: "ETA m:ss" from ``eta_seconds``."""

    def render(self, task: Task) -> Text:
        total = None if task.total is None else int(task.total)
        eta = eta_seconds(int(task.completed), total, task.elapsed or 0.0)
        return Text(f"ETA {format_seconds(eta)}", style="progress.remaining")


@contextlib.contextmanager
def status(message: str, enabled: bool | None = None) -> Iterator[None]:
    """Show ``message`` while a step without countable items runs (loading a model): a
    spinner on a terminal, one plain line on stderr otherwise."""
    if not (progress_enabled() if enabled is None else enabled):
        yield
        return
    if not _interactive():
        print(f"{message} ...", file=sys.stderr)
        yield
        return
    with Console(stderr=True).status(message):
        yield
