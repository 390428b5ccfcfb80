"""Observers by name, for specs and the command line: ``make_observer("percentile", ...)``."""

from __future__ import annotations

from typing import Any

from lowbit.errors import InvalidSpecError
from lowbit.observers.base import Observer
from lowbit.observers.entropy import EntropyObserver
from lowbit.observers.minmax import MinMaxObserver, MovingAverageMinMaxObserver
from lowbit.observers.mse import MSEObserver
from lowbit.observers.percentile import PercentileObserver

OBSERVERS: dict[str, type[Observer]] = {
    "minmax": MinMaxObserver,
    "moving_average": MovingAverageMinMaxObserver,
    "percentile": PercentileObserver,
    "mse": MSEObserver,
    "entropy": EntropyObserver,
}


def make_observer(name: str, **kwargs: Any) -> Observer:
    """A new observer of the registered ``name`` built with ``kwargs`` (e.g. ``axis=1``,
    ``percentile=99.9``)."""
    try:
        cls = OBSERVERS[name]
    except KeyError:
        known = ", ".join(OBSERVERS)
        raise InvalidSpecError(f"unknown observer {name!r}; known observers: {known}") from None
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise InvalidSpecError(f"bad options for observer {name!r}: {exc}") from None
