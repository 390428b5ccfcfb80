"""Shared test fixtures: deterministic seeds and the hypothesis profile. Helper functions
live in tests/lowbit_testkit/ (imported as `lowbit_testkit.*`)."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import settings

# CI runs the property tests with a fixed sequence of examples, so a landing never depends
# on luck; locally hypothesis explores new examples on every run.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked ``longest`` first, the rest in their order: under `make test`'s two
    workers the tutorial (five minutes) starts at once instead of after a third of the suite,
    with the other worker taking everything else (`--dist worksteal` rebalances the rest)."""
    items.sort(key=lambda item: item.get_closest_marker("longest") is None)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _one_thread_per_worker() -> None:
    """Under pytest-xdist (`make test`: two workers on two cores) every test starts with one
    torch thread: an in-process CLI call sets 2 (its --threads default) and would otherwise
    leave 2 workers x 2 threads on 2 cores, where OpenMP's waiting threads slowed the suite
    by minutes (the digits CNN trained 10x slower). Tests that need threads set them."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _progress_env(monkeypatch) -> None:
    """`lowbit quantize`/`demo` turn progress on through LOWBIT_PROGRESS for their own
    process; run in-process by a test, that must not leak into the next test's stderr."""
    monkeypatch.delenv("LOWBIT_PROGRESS", raising=False)
