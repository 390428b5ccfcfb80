"""sha256 of an output, file or folder, for tests that compare outputs byte for byte."""

from __future__ import annotations

import hashlib
from pathlib import Path


def output_digests(out: Path) -> dict[str, str] | None:
    """sha256 of every file of an output: a file (keyed by its name) or a folder (keyed by
    relative path); None when nothing is there."""
    if out.is_file():
        return {out.name: hashlib.sha256(out.read_bytes()).hexdigest()}
    if out.is_dir():
        files = sorted(p for p in out.rglob("*") if p.is_file())
        return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    return None
