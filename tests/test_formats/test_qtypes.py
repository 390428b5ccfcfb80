"""The format table."""

from __future__ import annotations

import pytest
import torch

from lowbit.errors import UnsupportedFormatError
from lowbit.formats.qtypes import QTYPES, IntType, get_qtype


@pytest.mark.parametrize("bits", range(1, 9))
def test_integer_ranges(bits: int) -> None:
    s, u = get_qtype(f"int{bits}"), get_qtype(f"uint{bits}")
    assert (s.qmin, s.qmax) == (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    assert (u.qmin, u.qmax) == (0, 2**bits - 1)
    assert s.storage == torch.int8 and u.storage == torch.uint8


def test_named_formats() -> None:
    assert get_qtype("fp8_e4m3").max == 448.0
    assert get_qtype("fp8_e5m2").max == 57344.0
    assert get_qtype("nf4").bits == 4
    assert get_qtype("binary").bits == 1 and get_qtype("ternary").bits == 2
    assert {"fp16", "bf16", "fp32"} <= set(QTYPES)


def test_unknown_and_out_of_range() -> None:
    with pytest.raises(UnsupportedFormatError, match="known formats"):
        get_qtype("int12")
    with pytest.raises(UnsupportedFormatError, match="1 to 8"):
        IntType(9, True)
