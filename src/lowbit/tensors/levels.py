"""LevelsPackedTensor: binary (1-bit) or ternary (2-bit) codes packed densely + a magnitude
``a`` per block, x' = a·level[q]. The arithmetic is formats.levels'; this class only stores it
(the ternary threshold is needed only to choose codes, so it is not stored).
"""

from __future__ import annotations

import torch

from lowbit.formats.levels import dequantize_levels
from lowbit.formats.qtypes import LevelsType
from lowbit.tensors.base import LevelCodesTensor, widen


class LevelsPackedTensor(LevelCodesTensor):
    """Packed binary {-a, +a} or ternary {-a, 0, +a} codes with one magnitude per block."""

    kind = "levels_packed"
    family = LevelsType

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """x' = a·level[q] (levels -1, +1 or -1, 0, +1)."""
        return dequantize_levels(
            self.codes(), widen(self.scale), self.qtype, self.granularity, dtype
        )
