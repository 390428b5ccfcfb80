"""Count how often gguf-py parses a GGUF file (each parse reads every vocabulary string)."""

from __future__ import annotations

import pytest


def count_gguf_parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Replace gguf.GGUFReader, for the test, by a subclass that records each file it parses;
    returns the list it appends the paths to."""
    import gguf

    parsed: list[str] = []

    class CountingReader(gguf.GGUFReader):
        def __init__(self, path, mode="r") -> None:
            parsed.append(str(path))
            super().__init__(path, mode)

    monkeypatch.setattr(gguf, "GGUFReader", CountingReader)
    return parsed
