"""The fixed calibration/evaluation split of pydoc_data.topics, text files, passages."""

from __future__ import annotations

from pathlib import Path
from pydoc_data.topics import topics

import pytest

from lowbit.errors import InvalidInputError
from lowbit.eval.text import calibration_text, evaluation_text, read_text, text_chunks


def test_split_is_by_whole_topics_and_disjoint() -> None:
    calib, evaluation = calibration_text(), evaluation_text()
    in_calib = {name for name, text in topics.items() if text in calib}
    in_eval = {name for name, text in topics.items() if text in evaluation}
    assert in_calib | in_eval == set(topics)
    assert not in_calib & in_eval
    # Calibration is the alphabetical head of the topics, evaluation the tail.
    assert max(in_calib) < min(in_eval)


def test_split_halves_the_characters() -> None:
    calib, evaluation = calibration_text(), evaluation_text()
    total = sum(len(t) for t in topics.values())
    assert 0.4 * total < len(calib) < 0.6 * total
    assert 0.4 * total < len(evaluation) < 0.6 * total


def test_split_is_deterministic() -> None:
    from lowbit.eval import text as module

    first = (calibration_text(), evaluation_text())
    module._split.cache_clear()
    assert (calibration_text(), evaluation_text()) == first


def test_read_text_returns_the_file(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_text("héllo\nworld\n", encoding="utf-8")
    assert read_text(path) == "héllo\nworld\n"


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "no text"),
        (b" \n\t\n", "no text"),
        (b"abc\x00def", "binary"),
        (b"caf\xe9", "not valid UTF-8"),
    ],
)
def test_read_text_rejects_unusable_files(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "t.txt"
    path.write_bytes(content)
    with pytest.raises(InvalidInputError, match=match):
        read_text(path)


def test_read_text_rejects_missing_files_and_folders(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="no such text file"):
        read_text(tmp_path / "absent.txt")
    with pytest.raises(InvalidInputError, match="not a file"):
        read_text(tmp_path)


def test_text_chunks_are_consecutive_word_windows() -> None:
    text = " ".join(f"w{i}" for i in range(23))
    chunks = text_chunks(text, words=5)
    assert len(chunks) == 4  # the trailing 3 words are dropped
    assert chunks[0] == "w0 w1 w2 w3 w4"
    assert chunks[3] == "w15 w16 w17 w18 w19"
    assert text_chunks(text, 2, words=5) == chunks[:2]
    assert text_chunks(text, 100, words=5) == chunks


def test_text_chunks_of_the_evaluation_text() -> None:
    chunks = text_chunks(evaluation_text(), 1000, words=32)
    assert len(chunks) > 900
    assert all(len(c.split()) == 32 for c in chunks)
    assert len(set(chunks)) > 0.95 * len(chunks)


@pytest.mark.parametrize(("n", "words"), [(0, 5), (3, 0)])
def test_text_chunks_rejects_bad_sizes(n: int, words: int) -> None:
    with pytest.raises(InvalidInputError):
        text_chunks("a b c d e f", n, words)


def test_text_chunks_rejects_too_short_text() -> None:
    with pytest.raises(InvalidInputError, match="fewer than one"):
        text_chunks("only three words", words=5)
