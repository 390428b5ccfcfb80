"""CodebookPackedTensor: codebook indices (NF4: 4 bits) packed densely + an absmax scale per
block, x' = s·level[q]. The arithmetic is formats.codebook's; this class only stores it.
"""

from __future__ import annotations

import torch

from lowbit.formats.codebook import dequantize_codebook
from lowbit.formats.qtypes import CodebookType
from lowbit.tensors.base import LevelCodesTensor, widen


class CodebookPackedTensor(LevelCodesTensor):
    """Packed codebook indices (NF4 by default) with an absmax scale per block."""

    kind = "codebook_packed"
    family = CodebookType

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """x' = s·level[q]."""
        return dequantize_codebook(
            self.codes(), widen(self.scale), self.granularity, self.qtype, dtype
        )
