"""Shared test fixtures: deterministic seeds and the golden vectors folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

GOLDEN = Path(__file__).parent / "golden"


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def load_golden(name: str) -> dict:
    """A committed golden-vector file (each carries its provenance)."""
    return json.loads((GOLDEN / name).read_text())
