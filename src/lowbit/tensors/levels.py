"""LevelsPackedTensor: binary (1-bit) or ternary (2-bit) codes packed densely + a magnitude
``a`` per block, x' = a·level[q]. The arithmetic is formats.levels'; this class only stores it
(the ternary threshold is needed only to choose codes, so it is not stored).
"""

from __future__ import annotations

import torch

from lowbit.formats.granularity import Granularity, PerTensor
from lowbit.formats.levels import choose_levels_scale, dequantize_levels, quantize_levels
from lowbit.formats.qtypes import TERNARY, LevelsType
from lowbit.tensors.base import LevelCodesTensor, widen


class LevelsPackedTensor(LevelCodesTensor):
    """Packed binary {-a, +a} or ternary {-a, 0, +a} codes with one magnitude per block."""

    kind = "levels_packed"
    family = LevelsType

    @classmethod
    def quantize(
        cls,
        w: torch.Tensor,
        qtype: LevelsType = TERNARY,
        granularity: Granularity = PerTensor(),
        *,
        scale_dtype: torch.dtype = torch.float32,
    ) -> LevelsPackedTensor:
        """Binary (XNOR-Net) or ternary (TWN) quantization of ``w`` (formats.levels); the
        codes do not depend on the magnitude, so rounding it to ``scale_dtype`` is harmless."""
        scale, threshold = choose_levels_scale(w, qtype, granularity)
        codes = quantize_levels(w, threshold, qtype, granularity)
        return cls.from_codes(
            codes, scale, qtype=qtype, granularity=granularity, scale_dtype=scale_dtype
        )

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """x' = a·level[q] (levels -1, +1 or -1, 0, +1)."""
        return dequantize_levels(
            self.codes(), widen(self.scale), self.qtype, self.granularity, dtype
        )
