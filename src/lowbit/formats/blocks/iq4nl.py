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
from .search import GROUP_MAX_EPS, seq_sum, seq_sum0, signed_absmax

_T = GGMLType
KVALUES = torch.tensor(
    [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=torch.float32
)


# ggml's best_index_int8 picks mu-1 when x - val[mu-1] < val[mu] - x (float32) for the first
# val[mu] > x: monotone in x, so index j is reached exactly at a threshold, which (bisected
# over every float32 between neighbours with that float32 rule) is the midpoint of the two
# table values: x >= (val[j-1] + val[j]) / 2 picks j or above, ties to the upper one. The
# midpoints are multiples of 1/2, so the index is a function of floor(2x) (2x is exact):
# a 513-entry table over floor(2x) clamped to [-256, 256] gives the index and the value.
_MIDPOINTS = (KVALUES[:-1] + KVALUES[1:]) / 2
_INDEX_LUT = torch.searchsorted(
    _MIDPOINTS, torch.arange(-256, 257, dtype=torch.float32) / 2, right=True
).to(torch.uint8)
_VALUE_LUT = KVALUES[_INDEX_LUT.long()]


def _lut_position(v: torch.Tensor) -> torch.Tensor:
    """Flat int32 positions in the tables: floor(2v) clamped to [-256, 256], plus 256 (NaN,
    from 0 * an overflowed inverse scale, at the top, where best_index_int8 ends)."""
    p = torch.floor(v * 2).nan_to_num_(nan=256.0).clamp_(-256, 256)
    return p.add_(256).to(torch.int32).view(-1)


def best_index(v: torch.Tensor) -> torch.Tensor:
    """ggml's best_index_int8(16, kvalues_iq4nl, v): the nearest table entry, ties to the upper
    one (`x - val[mu-1] < val[mu] - x ? mu-1 : mu`), as uint8 indices of v's shape."""
    return _INDEX_LUT.index_select(0, _lut_position(v)).view(v.shape)


class IQ4NLCodec(BlockCodec):
    """block_iq4_nl: fp16 d, qs[16] (index j low nibble, j + 16 high nibble); x = d*kvalues[q]."""

    name, ggml_type, block_size, type_size = "iq4_nl", int(_T.IQ4_NL), 32, 18
    ntry = 7
    chunk_values = 1 << 18  # its plain rounding is a search too (16 scales per block)
    native_rtn = False  # torch is faster here (docs/decisions.md, "GGUF RTN in C")

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
        """quantize_row_iq4_nl_impl on (rows, nb, 32) blocks: the search runs on (32, N)
        tensors (N blocks), whose two sums are stacked and summed element by element."""
        rows, nb, _ = blocks.shape
        x = blocks.reshape(-1, 32)
        mx = signed_absmax(x)
        zero = mx.abs() < GROUP_MAX_EPS
        safe = torch.where(zero, 1.0, mx)
        d = -safe / KVALUES[0] if ntry > 0 else safe / KVALUES[0]
        xt = x.t().contiguous()  # (32, N)
        wt = w.reshape(-1, 32).t().contiguous()
        sums = torch.empty((32, 2, xt.shape[1]))

        def sums_for(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            q = _VALUE_LUT.index_select(0, _lut_position(v)).view(v.shape)  # kvalues[l]
            wq = wt * q
            torch.mul(wq, xt, out=sums[:, 0])  # w*q*x[j]
            torch.mul(wq, q, out=sums[:, 1])  # w*q*q
            sx, s2 = seq_sum0(sums)
            return sx, s2

        v0 = xt * rdiv(1.0, d)
        sumqx, sumq2 = sums_for(v0)
        d = torch.where(sumq2 > 0, sumqx / torch.where(sumq2 > 0, sumq2, 1.0), 0.0)
        best = d * sumqx
        for itry in range(-ntry, ntry + 1):
            sx, s2 = sums_for(xt * rdiv(float(itry - 127), safe))
            better = (s2 > 0) & (sx * sx > best * s2)
            d = torch.where(better, sx / torch.where(s2 > 0, s2, 1.0), d)
            best = torch.where(better, d * sx, best)
        d = torch.where(zero, 0.0, d)
        if ntry > 0:
            v0 = xt * torch.where(d != 0, rdiv(1.0, torch.where(d != 0, d, 1.0)), 0.0)
        iq = best_index(v0)
        return self.encode(iq.t().reshape(rows, nb, 32), d.view(rows, nb))

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
