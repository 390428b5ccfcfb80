"""CodebookPackedTensor: codebook indices (NF4: 4 bits) packed densely + an absmax scale per
block, x' = s·level[q]. The arithmetic is formats.codebook's; this class only stores it.
"""

from __future__ import annotations

import torch

from lowbit.formats.codebook import choose_absmax_scale, dequantize_codebook, quantize_codebook
from lowbit.formats.granularity import Granularity, PerGroup
from lowbit.formats.qtypes import NF4, CodebookType
from lowbit.tensors.base import LevelCodesTensor, to_storage, widen


class CodebookPackedTensor(LevelCodesTensor):
    """Packed codebook indices (NF4 by default) with an absmax scale per block."""

    kind = "codebook_packed"
    family = CodebookType

    @classmethod
    def quantize(
        cls,
        w: torch.Tensor,
        qtype: CodebookType = NF4,
        granularity: Granularity = PerGroup(64),
        *,
        scale_dtype: torch.dtype = torch.float32,
    ) -> CodebookPackedTensor:
        """Nearest level to w / absmax per block (formats.codebook); the scale is rounded to
        ``scale_dtype`` first so the indices match the stored scale."""
        scale = to_storage(
            choose_absmax_scale(w, granularity), scale_dtype, name="scale", nonzero=True
        )
        codes = quantize_codebook(w, widen(scale), granularity, qtype)
        return cls.from_codes(codes, scale, qtype=qtype, granularity=granularity)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """x' = s·level[q]."""
        return dequantize_codebook(
            self.codes(), widen(self.scale), self.granularity, self.qtype, dtype
        )
