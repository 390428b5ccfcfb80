"""Signal-to-quantization-noise ratio: the one SQNR of lowbit (formats, eval, tests and
benchmarks all call this), at L0 so that every layer can import it."""

from __future__ import annotations

import math

import torch


def sqnr_db(reference: torch.Tensor, approximation: torch.Tensor) -> float:
    """10·log10(‖ref‖² / ‖ref − approx‖²) in dB, computed in float64.

    Args:
        reference: the exact values (any shape, any float dtype).
        approximation: the quantized / approximate values, same shape.
    Returns:
        inf when the two are identical; -inf when the reference is all zeros and they are not.
    """
    ref = reference.detach().double()
    noise = (ref - approximation.detach().double()).pow(2).sum().item()
    signal = ref.pow(2).sum().item()
    if noise == 0:
        return math.inf
    return 10 * math.log10(signal / noise) if signal > 0 else -math.inf
