"""Committed golden vectors (each file carries its provenance)."""

from __future__ import annotations

import json
from pathlib import Path

GOLDEN = Path(__file__).parent / "golden"


def load_golden(name: str) -> dict:
    """A committed golden-vector file (each carries its provenance)."""
    return json.loads((GOLDEN / name).read_text())
