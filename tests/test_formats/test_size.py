"""Size accounting: bits per weight with scales, the size table, exact tensor sizes."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lowbit.errors import InvalidInputError, InvalidSpecError
from lowbit.formats.granularity import PerAxis, PerGroup, PerTensor
from lowbit.formats.packing import packed_nbytes
from lowbit.formats.size import SIZE_FORMATS, bits_per_weight, size_table, tensor_nbytes


def _row(rows, name):
    return next(r for r in rows if r.name == name)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((4, 128), 4.125),  # int4, fp16 scale per 128
        ((4, 128, 16, 16), 4.25),  # + fp16 zero point
        ((4, 32), 4.5),  # GGUF Q4_0
        ((4, 32, 16, 16), 5.0),  # GGUF Q4_1: scale + min
        ((8, 32), 8.5),  # GGUF Q8_0
        ((4, 64, 32), 4.5),  # nf4, fp32 absmax per 64
        ((3, 128), 3.125),
        ((2, 64), 2.25),
        ((8, None), 8.0),  # per-channel: scales are negligible per weight
    ],
)
def test_bits_per_weight_counts_scales_and_zero_points(args, expected) -> None:
    assert bits_per_weight(*args) == expected


@pytest.mark.parametrize(
    "kwargs", [{"bits": 0}, {"bits": 4, "group_size": 0}, {"bits": 4, "scale_bits": -1}]
)
def test_bits_per_weight_rejects_nonsense(kwargs) -> None:
    with pytest.raises(InvalidSpecError):
        bits_per_weight(**kwargs)


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
    names = [f.name for f in SIZE_FORMATS]
    assert len(names) == len(set(names))
    bpw = [f.bits_per_weight for f in SIZE_FORMATS]
    assert bpw == sorted(bpw, reverse=True)


@given(st.integers(1, 10**13))
def test_bytes_are_exact_and_rounded_up(n: int) -> None:
    for fmt, row in zip(SIZE_FORMATS, size_table(n), strict=True):
        exact = Fraction(n) * Fraction(row.bits_per_weight) / 8
        assert row.bytes - 1 < exact <= row.bytes
        assert fmt.name == row.name


@pytest.mark.parametrize("bad", [0, -5, 1.5, True, "7"])
def test_size_table_rejects_non_counts(bad) -> None:
    with pytest.raises(InvalidInputError):
        size_table(bad)


def test_tensor_nbytes_per_channel_and_grouped() -> None:
    shape = (4096, 4096)
    # int8 per channel: codes + one fp16 scale per row
    assert tensor_nbytes(shape, 8) == 4096 * 4096 + 4096 * 2
    # int4 g128 asym: codes + fp16 scale and zero per group of 128
    groups = 4096 * 4096 // 128
    assert tensor_nbytes(shape, 4, PerGroup(128), 16, 16) == 4096 * 4096 // 2 + groups * 4
    # the average agrees with bits_per_weight when groups divide the shape
    assert tensor_nbytes(shape, 4, PerGroup(128)) * 8 == bits_per_weight(4, 128) * 4096 * 4096


def test_tensor_nbytes_ragged_groups_and_3_bit_packing() -> None:
    shape = (3, 100)  # 100 = 64 + 36: two groups per row, the last ragged
    assert tensor_nbytes(shape, 3, PerGroup(64)) == packed_nbytes(300, 3) + 3 * 2 * 2
    assert tensor_nbytes(shape, 2, PerTensor(), scale_bits=32) == packed_nbytes(300, 2) + 4
    assert tensor_nbytes(shape, 4, PerAxis(1)) == 150 + 100 * 2
