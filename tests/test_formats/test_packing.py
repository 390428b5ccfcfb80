"""Packing b-bit codes into bytes: layout and exact inverse."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.errors import InvalidInputError, InvalidSpecError
from lowbit.formats.packing import pack_codes, packed_nbytes, unpack_codes


@settings(max_examples=200, deadline=None)
@given(bits=st.integers(1, 8), n=st.integers(0, 300), seed=st.integers(0, 2**31 - 1))
def test_unpack_of_pack_is_identity(bits: int, n: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 1 << bits, (n,), generator=gen, dtype=torch.uint8)
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == packed_nbytes(n, bits)
    assert torch.equal(unpack_codes(packed, bits, n), codes)


def test_layout_is_a_little_endian_bit_stream() -> None:
    assert pack_codes(torch.tensor([1, 15]), 4).tolist() == [0xF1]
    assert pack_codes(torch.tensor([1, 0, 0, 1, 1, 1, 1, 1, 1]), 1).tolist() == [0xF9, 0x01]
    assert pack_codes(torch.tensor([3, 0, 1, 2]), 2).tolist() == [0b10010011]
    # 3 bits: codes 1..7,0 -> bits 001 010 011 100 101 110 111 000 from the lowest bit
    stream = sum(c << (3 * i) for i, c in enumerate([1, 2, 3, 4, 5, 6, 7, 0]))
    expected = [(stream >> (8 * k)) & 0xFF for k in range(3)]
    assert pack_codes(torch.tensor([1, 2, 3, 4, 5, 6, 7, 0]), 3).tolist() == expected
    assert packed_nbytes(8, 3) == 3 and packed_nbytes(9, 3) == 4


def test_bad_codes_and_buffers_are_rejected() -> None:
    with pytest.raises(InvalidInputError, match=r"\[0, 15\]"):
        pack_codes(torch.tensor([16]), 4)
    with pytest.raises(InvalidInputError, match="offset signed codes"):
        pack_codes(torch.tensor([-1]), 4)
    with pytest.raises(InvalidInputError, match="truncated"):
        unpack_codes(torch.zeros(1, dtype=torch.uint8), 4, 3)
    with pytest.raises(InvalidSpecError):
        pack_codes(torch.tensor([0]), 9)
