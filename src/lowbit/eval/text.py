"""Real English text for calibration and evaluation, with a fixed split, and user text files.

The built-in text is Python's own documentation, ``pydoc_data.topics`` (standard library,
~465 KB of prose with code samples, no download). The split is by whole topics so that no
document is in both parts: the topics are sorted by name and the first ones, up to half of
the characters, are the calibration text; the remaining topics are the evaluation text.
The text differs between Python versions (the docs change), so compare numbers measured
with the same Python minor version.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

from lowbit.errors import InvalidInputError

CALIBRATION_FRACTION = 0.5
_SEPARATOR = "\n\n"


@cache
def _split() -> tuple[str, str]:
    from pydoc_data.topics import topics

    names = sorted(topics)
    total = sum(len(topics[n]) for n in names)
    calibration: list[str] = []
    size = 0
    for name in names:
        if size >= CALIBRATION_FRACTION * total:
            break
        calibration.append(name)
        size += len(topics[name])
    evaluation = names[len(calibration) :]
    return (
        _SEPARATOR.join(topics[n] for n in calibration),
        _SEPARATOR.join(topics[n] for n in evaluation),
    )


def calibration_text() -> str:
    """The calibration part of pydoc_data.topics: the first half (by characters) of the
    topics sorted by name, joined by blank lines. Never overlaps evaluation_text()."""
    return _split()[0]


def evaluation_text() -> str:
    """The evaluation part of pydoc_data.topics: the topics after the calibration part,
    sorted by name, joined by blank lines. Perplexity and embedding fidelity default to it."""
    return _split()[1]


def read_text(path: str | os.PathLike) -> str:
    """The contents of a UTF-8 text file, for calibration or evaluation.

    Raises:
        InvalidInputError: the file is missing, a folder, empty (or only whitespace),
            binary (NUL bytes) or not valid UTF-8.
    """
    path = Path(path)
    if not path.exists():
        raise InvalidInputError(f"no such text file: {path}; check the path")
    if not path.is_file():
        raise InvalidInputError(f"{path} is not a file; pass a UTF-8 text file")
    data = path.read_bytes()
    if b"\x00" in data:
        raise InvalidInputError(
            f"{path} is a binary file (it holds NUL bytes); pass a UTF-8 text file"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInputError(
            f"{path} is not valid UTF-8 ({exc.reason} at byte {exc.start}); convert it to "
            "UTF-8, e.g. iconv -t UTF-8"
        ) from None
    if not text.strip():
        raise InvalidInputError(f"{path} holds no text; pass a file with some text in it")
    return text


def text_chunks(text: str, n: int | None = None, words: int = 50) -> list[str]:
    """Consecutive, non-overlapping passages of ``words`` whitespace-separated words.

    Args:
        text: the text to cut (whitespace inside a passage becomes single spaces).
        n: at most this many passages (the first ones); None for all. A shorter text
            gives fewer passages; a trailing partial passage is dropped.
        words: words per passage.

    Raises:
        InvalidInputError: ``n`` or ``words`` below 1, or a text shorter than one passage.
    """
    if words < 1 or (n is not None and n < 1):
        raise InvalidInputError(f"need n >= 1 and words >= 1 (got n={n}, words={words})")
    tokens = text.split()
    available = len(tokens) // words
    if available == 0:
        raise InvalidInputError(
            f"the text has {len(tokens)} words, fewer than one {words}-word passage; pass a "
            "longer text or fewer words per passage"
        )
    count = available if n is None else min(n, available)
    return [" ".join(tokens[i * words : (i + 1) * words]) for i in range(count)]
