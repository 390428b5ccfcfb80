"""``lowbit export --format tflite``: an int8-static CNN as a LiteRT flatbuffer."""

from __future__ import annotations

from pathlib import Path


def export_tflite_command(
    model: str, out: Path, *, recipe: str | None, verify: bool, json: bool
) -> None:
    """Load MODEL, export it as .tflite, print the result."""
    raise NotImplementedError("issue 14: being written")
