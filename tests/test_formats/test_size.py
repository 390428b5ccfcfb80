"""The size table `lowbit size` prints (the formats' own arithmetic: test_weight_format.py)."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lowbit.errors import InvalidInputError
from lowbit.formats.size import size_formats, size_table


def _row(rows, name):
    return next(r for r in rows if r.name == name)


def test_issue_examples_176b() -> None:
    rows = size_table(176 * 10**9)
    assert _row(rows, "fp32").bytes == 704 * 10**9
    assert _row(rows, "fp16").bytes == _row(rows, "bf16").bytes == 352 * 10**9
    assert _row(rows, "int8").bytes == 176 * 10**9
    assert _row(rows, "int4").bytes == 88 * 10**9
    assert _row(rows, "int4-g128").bits_per_weight == 4.125
    assert _row(rows, "int4-g128").bytes == 90_750_000_000


def test_issue_examples_1b_span_2_to_32_bits() -> None:
    rows = size_table(10**9)
    assert _row(rows, "int2").bytes == 250_000_000
    assert _row(rows, "fp32").bytes == 4 * 10**9
    assert _row(rows, "ternary").bits_per_weight == 2.0  # stored in 2 bits, not 1.58


def test_table_names_are_unique_and_sorted_by_bits() -> None:
    names = [f.name for f in size_formats()]
    assert len(names) == len(set(names))
    bpw = [f.bits_per_weight for f in size_formats()]
    assert bpw == sorted(bpw, reverse=True)


@given(st.integers(1, 10**13))
def test_bytes_are_exact_and_rounded_up(n: int) -> None:
    for fmt, row in zip(size_formats(), size_table(n), strict=True):
        exact = Fraction(n) * Fraction(row.bits_per_weight) / 8
        assert row.bytes - 1 < exact <= row.bytes
        assert fmt.name == row.name


@pytest.mark.parametrize("bad", [0, -5, 1.5, True, "7"])
def test_size_table_rejects_non_counts(bad) -> None:
    with pytest.raises(InvalidInputError):
        size_table(bad)


def test_every_gguf_block_type_has_a_row_derived_from_its_codec() -> None:
    from lowbit.formats.blocks import BLOCK_TYPES

    rows = {r.name: r for r in size_table(256 * 10**6)}
    for name, codec in BLOCK_TYPES.items():
        row = rows[f"gguf-{name}"]
        # 256e6 weights is a whole number of blocks of every type: exactly the codec's bytes
        assert row.bytes == codec.nbytes((10**6, 256))
    assert rows["gguf-q4_k"].bits_per_weight == 4.5
    assert rows["gguf-q2_k"].bits_per_weight == 2.625
