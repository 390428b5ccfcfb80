"""IQ4_NL: 32-element blocks of 4-bit indices into ggml's non-linear table kvalues_iq4nl.

quantize() is what llama-quantize writes, ggml_quantize_chunk -> quantize_iq4_nl, which runs
quantize_row_iq4_nl_impl with ntry = 7 with or without an imatrix (x^2 weights without one).
Note this differs from quantize_row_iq4_nl_ref (ntry = -1, no scale search, and an all-zero
block packs whatever indices the previous block left in a stack buffer); quantize_ref()
gives that variant for blocks that are not all zero. The search sums in float32 in ggml's
order (see search.py).
"""

from __future__ import annotations

import torch

from .common import (
    BlockCodec,
    BlockGrid,
    GGMLType,
    fp16_bytes,
    fp16_from_bytes,
    pack_nibbles,
    per_element,
    rdiv,
    sqrtf,
    unpack_nibbles,
)
from .search import GROUP_MAX_EPS, seq_sum, signed_absmax

_T = GGMLType
KVALUES = torch.tensor(
    [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=torch.float32
)


def best_index(v: torch.Tensor) -> torch.Tensor:
    """ggml's best_index_int8(16, kvalues_iq4nl, v): the nearest table entry, ties to the upper
    one (`x - val[mu-1] < val[mu] - x ? mu-1 : mu`), as int64 indices."""
    mu = torch.searchsorted(KVALUES, v.contiguous(), right=True).clamp(1, 15)
    lo, hi = KVALUES[mu - 1], KVALUES[mu]
    return torch.where(v - lo < hi - v, mu - 1, mu)


class IQ4NLCodec(BlockCodec):
    """block_iq4_nl: fp16 d, qs[16] (index j low nibble, j + 16 high nibble); x = d*kvalues[q]."""

    name, ggml_type, block_size, type_size = "iq4_nl", int(_T.IQ4_NL), 32, 18
    ntry = 7

    def _quantize_blocks(self, blocks):
        return self._impl(blocks, blocks * blocks, self.ntry)

    def _quantize_blocks_weighted(self, blocks, rows, imp):
        # quantize_row_iq4_nl_impl with quant_weights: sigma2 over the 32-element super-block
        sigma2 = seq_sum(blocks * blocks) * (2.0 / 32)
        w = imp * sqrtf(sigma2.unsqueeze(-1) + blocks * blocks)
        return self._impl(blocks, w, self.ntry)

    def quantize_ref(self, x: torch.Tensor) -> torch.Tensor:
        """quantize_row_iq4_nl_ref (ntry = -1); all-zero blocks are not reproducible (stale L)."""
        rows, k = x.shape
        self._check_k(k)
        blocks = x.to(torch.float32).reshape(rows, k // 32, 32)
        return self._impl(blocks, blocks * blocks, -1).reshape(rows, -1)

    def _impl(self, blocks, w, ntry):
        xb = blocks
        mx = signed_absmax(xb)
        zero = mx.abs() < GROUP_MAX_EPS
        safe = torch.where(zero, 1.0, mx)
        d = -safe / KVALUES[0] if ntry > 0 else safe / KVALUES[0]
        iq = best_index(rdiv(1.0, d).unsqueeze(-1) * xb)
        q = KVALUES[iq]
        wq = w * q
        sumqx = seq_sum(wq * xb)
        sumq2 = seq_sum(wq * q)
        d = torch.where(sumq2 > 0, sumqx / torch.where(sumq2 > 0, sumq2, 1.0), 0.0)
        best = d * sumqx
        for itry in range(-ntry, ntry + 1):
            idn = rdiv(float(itry - 127), safe)
            q = KVALUES[best_index(idn.unsqueeze(-1) * xb)]
            wq = w * q
            sx = seq_sum(wq * xb)
            s2 = seq_sum(wq * q)
            better = (s2 > 0) & (sx * sx > best * s2)
            d = torch.where(better, sx / torch.where(s2 > 0, s2, 1.0), d)
            best = torch.where(better, d * sx, best)
        d = torch.where(zero, 0.0, d)
        if ntry > 0:
            idv = torch.where(d != 0, rdiv(1.0, torch.where(d != 0, d, 1.0)), 0.0)
            iq = best_index(idv.unsqueeze(-1) * xb)
        return self.encode(iq, d)

    def encode(self, codes: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """codes (rows, nb, 32) table indices 0..15, d (rows, nb) -> bytes (rows, nb, 18)."""
        return torch.cat([fp16_bytes(d.unsqueeze(-1)), pack_nibbles(codes)], -1)

    def decode(self, raw: torch.Tensor):
        """bytes -> (indices (rows, nb, 32), d (rows, nb))."""
        return unpack_nibbles(raw[..., 2:]), fp16_from_bytes(raw[..., :2]).squeeze(-1)

    def grid(self, raw):
        """x = d * kvalues_iq4nl[q]: a non-uniform grid, q in 0..15."""
        _, d = self.decode(raw)
        scale = per_element(d.unsqueeze(-1), 32)
        return BlockGrid(scale, torch.zeros_like(scale), KVALUES)

    def _dequantize_blocks(self, raw):
        iq, d = self.decode(raw)
        return d.unsqueeze(-1) * KVALUES[iq.long()]
