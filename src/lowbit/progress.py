"""One helper through which every slow call reports progress (a rich progress bar on a
terminal, nothing otherwise), so library code never prints."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress_enabled() -> bool:
    """Bars show on an interactive stderr, or when LOWBIT_PROGRESS=1 forces them."""
    forced = os.environ.get("LOWBIT_PROGRESS")
    if forced is not None:
        return forced == "1"
    return sys.stderr.isatty()


def track(
    items: Iterable[T], description: str, total: int | None = None, enabled: bool | None = None
) -> Iterator[T]:
    """Iterate over ``items``, showing a progress bar with ``description`` when enabled."""
    if not (progress_enabled() if enabled is None else enabled):
        yield from items
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)
