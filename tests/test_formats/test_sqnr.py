"""sqnr_db: the one SQNR (formats, eval, tests and benchmarks use it)."""

from __future__ import annotations

import math

import torch

from lowbit.formats.sqnr import sqnr_db


def test_sqnr_by_hand() -> None:
    ref = torch.tensor([3.0, 4.0])
    assert sqnr_db(ref, ref) == math.inf
    assert math.isclose(sqnr_db(ref, torch.tensor([3.0, 3.0])), 10 * math.log10(25 / 1))
    assert sqnr_db(torch.zeros(2), ref) == -math.inf
    # float64 inside: bf16 / float16 inputs give the same number as their float32 copies
    half = ref.to(torch.bfloat16)
    assert sqnr_db(half, half * 0.5) == sqnr_db(half.float(), half.float() * 0.5)
