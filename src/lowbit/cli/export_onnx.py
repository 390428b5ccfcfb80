"""``lowbit export --format onnx``: a lowbit save folder or Hugging Face folder as ONNX."""

from __future__ import annotations

from pathlib import Path


def export_onnx_command(
    model: str, out: Path, *, target: str, opset: int | None, recipe: str | None,
    verify: bool, json: bool,
) -> None:  # fmt: skip
    """Load MODEL (quantizing it with ``recipe`` first if given), export, print the result."""
    raise NotImplementedError("issue 14: being written")
