"""The k-quant super-blocks of 256 elements: Q4_K, Q5_K, Q6_K (ggml-quants.c).

Round to nearest (importance=None) follows quantize_row_q{4,5,6}_K_ref: a per-sub-block scale
search (make_qkx2_quants for Q4_K/Q5_K, make_qx_quants for Q6_K), 6/8-bit quantization of the
sub-block scales against one fp16 super-block scale, then a final rounding of every element.
The searches sum in float32 in ggml's order (see search.py), so the bytes match llama.cpp's;
a compiler that contracted those sums into FMAs would change a few blocks, which is why the
tests ask >= 99.99% identical blocks on real weights rather than assuming it.

encode/decode expose the grid: codes (rows, nb, 256) unsigned, d/dmin (rows, nb) and the
integer sub-block scales (and mins) (rows, nb, 8 or 16).
"""

from __future__ import annotations

import torch

from .common import (
    BlockCodec,
    BlockGrid,
    GGMLType,
    fp16_bytes,
    fp16_from_bytes,
    per_element,
    rdiv,
    sqrtf,
    uniform_levels,
)
from .search import (
    GROUP_MAX_EPS,
    make_qkx2_quants,
    make_qp_quants,
    make_qx_quants,
    nearest_int,
    seq_sum,
)

QK_K = 256
_T = GGMLType


def _pack_scale_min_k4(ls: torch.Tensor, lm: torch.Tensor) -> torch.Tensor:
    """8 six-bit scales and mins (…, 8) -> the 12 bytes of block_q4_K/q5_K.scales."""
    ls, lm = ls.to(torch.uint8), lm.to(torch.uint8)
    lo = torch.cat(
        [ls[..., :4] | ((ls[..., 4:] >> 4) << 6), lm[..., :4] | ((lm[..., 4:] >> 4) << 6)], -1
    )
    hi = (ls[..., 4:] & 0xF) | ((lm[..., 4:] & 0xF) << 4)
    return torch.cat([lo, hi], -1)


def _unpack_scale_min_k4(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """get_scale_min_k4 for j = 0..7: 12 bytes -> (scales (…, 8), mins (…, 8)) uint8."""
    a, b, c = s[..., 0:4], s[..., 4:8], s[..., 8:12]
    sc = torch.cat([a & 63, (c & 0xF) | ((a >> 6) << 4)], -1)
    mn = torch.cat([b & 63, (c >> 4) | ((b >> 6) << 4)], -1)
    return sc, mn


class _KMin(BlockCodec):
    """Q4_K / Q5_K: 8 sub-blocks of 32 with a 6-bit scale and min each, x = d*sc*q - dmin*m."""

    block_size = QK_K
    chunk_values = 1 << 17
    nmax = 15
    rmin, rdelta, nstep = -1.0, 0.1, 20

    def _sub_scales(self, blocks: torch.Tensor):
        """(scales, mins, codes) per 32-element sub-block, as in quantize_row_q{4,5}_K_ref."""
        xs = blocks.reshape(-1, 32)
        av_x = sqrtf(seq_sum(xs * xs) / 32)
        w = av_x.unsqueeze(-1) + xs.abs()
        return make_qkx2_quants(xs, w, self.nmax, self.rmin, self.rdelta, self.nstep)

    def _quantize_blocks(self, blocks):
        rows, nb, _ = blocks.shape
        scales, mins, lv = self._sub_scales(blocks)
        return self._finish(
            blocks, scales.view(rows, nb, 8), mins.view(rows, nb, 8), lv.view(rows, nb, 8, 32)
        )

    def _finish(self, blocks, scales, mins, lv):
        """Shared tail of the _ref and _impl paths: 6-bit scales/mins, fp16 d/dmin, final codes."""
        max_scale = torch.where(scales.amax(-1) > 0, scales.amax(-1), 0.0)
        # from +0 with `if (s > max)`: never -0.0
        max_min = torch.where(mins.amax(-1) > 0, mins.amax(-1), 0.0)
        inv_scale = torch.where(
            max_scale > 0, rdiv(63.0, torch.where(max_scale > 0, max_scale, 1.0)), 0.0
        )
        inv_min = torch.where(max_min > 0, rdiv(63.0, torch.where(max_min > 0, max_min, 1.0)), 0.0)
        ls = (nearest_int(inv_scale.unsqueeze(-1) * scales) & 0xFF).clamp(max=63)  # (uint8_t) cast
        lm = (nearest_int(inv_min.unsqueeze(-1) * mins) & 0xFF).clamp(max=63)
        d = (max_scale / 63.0).to(torch.float16).to(torch.float32)
        dmin = (max_min / 63.0).to(torch.float16).to(torch.float32)
        return self._requantize(blocks, ls, lm, d, dmin, lv)

    def _quantize_blocks_weighted(self, blocks, rows, imp):
        """quantize_row_q{4,5}_K_impl: weights qw * sqrt(sigma2 + x^2) with sigma2 = 2 * sum x^2
        / 256 per super-block, make_qkx3_quants(32, nmax, -0.9, 0.05, 36) per sub-block, then
        make_qp_quants(8, 63, ..., sw) for the sub-block scales and mins."""
        rws, nb, _ = blocks.shape
        sigma2 = 2 * seq_sum(blocks * blocks) / 256
        x = blocks.view(rws, nb, 8, 32)
        w = imp.view(1, nb, 8, 32) * sqrtf(sigma2.view(rws, nb, 1, 1) + x * x)
        sw = seq_sum(w).reshape(-1, 8)
        scales, mins, lv = make_qkx2_quants(
            x.reshape(-1, 32), w.reshape(-1, 32), self.nmax, -0.9, 0.05, 36
        )
        d_block, ls = make_qp_quants(scales.view(-1, 8), 63, sw)
        m_block, lm = make_qp_quants(mins.view(-1, 8), 63, sw)
        f16 = lambda v: v.view(rws, nb).to(torch.float16).to(torch.float32)  # noqa: E731
        return self._requantize(
            blocks,
            (ls & 0xFF).view(rws, nb, 8),
            (lm & 0xFF).view(rws, nb, 8),
            f16(d_block),
            f16(m_block),
            lv.view(rws, nb, 8, 32),
        )

    def _requantize(self, blocks, ls, lm, d, dmin, lv):
        """The final pass of both paths: codes from the fp16 d/dmin and the 6-bit scales/mins."""
        ds = d.unsqueeze(-1) * ls.to(torch.float32)
        dm = dmin.unsqueeze(-1) * lm.to(torch.float32)
        x = blocks.view(*blocks.shape[:2], 8, 32)
        ok = ds != 0
        q = nearest_int((x + dm.unsqueeze(-1)) / torch.where(ok, ds, 1.0).unsqueeze(-1)).clamp(
            0, self.nmax
        )
        lv = torch.where(ok.unsqueeze(-1), q, lv.to(torch.int32))
        return self.encode(lv.reshape(*blocks.shape), d, dmin, ls, lm)

    def grid(self, raw):
        """x = (d * sc) * q - (dmin * m) per 32-element sub-block, q in 0..nmax."""
        _, d, dmin, sc, m = self.decode(raw)
        d1 = d.unsqueeze(-1) * sc.to(torch.float32)
        m1 = dmin.unsqueeze(-1) * m.to(torch.float32)
        return BlockGrid(per_element(d1, 32), per_element(-m1, 32), uniform_levels(0, self.nmax))

    def _dequantize_blocks(self, raw):
        q, d, dmin, sc, m = self.decode(raw)
        d1 = d.unsqueeze(-1) * sc.to(torch.float32)
        m1 = dmin.unsqueeze(-1) * m.to(torch.float32)
        x = d1.unsqueeze(-1) * q.view(*q.shape[:2], 8, 32).to(torch.float32) - m1.unsqueeze(-1)
        return x.reshape(q.shape)

    def _head(self, d, dmin, ls, lm):
        return torch.cat([fp16_bytes(torch.stack([d, dmin], -1)), _pack_scale_min_k4(ls, lm)], -1)


class Q4KCodec(_KMin):
    """block_q4_K: fp16 d, fp16 dmin, scales[12], qs[128] (144 bytes)."""

    name, ggml_type, type_size = "q4_k", int(_T.Q4_K), 144
    nmax, rmin, rdelta, nstep = 15, -1.0, 0.1, 20

    def encode(self, codes, d, dmin, scales, mins):
        """codes (rows, nb, 256) 0..15, d/dmin (rows, nb), scales/mins (rows, nb, 8) 0..63."""
        c = codes.to(torch.uint8).view(*codes.shape[:2], 4, 2, 32)
        qs = (c[..., 0, :] | (c[..., 1, :] << 4)).reshape(*codes.shape[:2], 128)
        return torch.cat([self._head(d, dmin, scales, mins), qs], -1)

    def decode(self, raw):
        dm = fp16_from_bytes(raw[..., :4])
        sc, m = _unpack_scale_min_k4(raw[..., 4:16])
        qs = raw[..., 16:].reshape(*raw.shape[:2], 4, 1, 32)
        q = torch.cat([qs & 0xF, qs >> 4], -2).reshape(*raw.shape[:2], 256)
        return q, dm[..., 0], dm[..., 1], sc, m


class Q5KCodec(_KMin):
    """block_q5_K: fp16 d, fp16 dmin, scales[12], qh[32], qs[128] (176 bytes)."""

    name, ggml_type, type_size = "q5_k", int(_T.Q5_K), 176
    nmax, rmin, rdelta, nstep = 31, -0.5, 0.1, 15

    def encode(self, codes, d, dmin, scales, mins):
        """codes (rows, nb, 256) 0..31, d/dmin (rows, nb), scales/mins (rows, nb, 8) 0..63."""
        c = codes.to(torch.uint8).view(*codes.shape[:2], 4, 2, 32)
        lo = c & 0xF
        qs = (lo[..., 0, :] | (lo[..., 1, :] << 4)).reshape(*codes.shape[:2], 128)
        hb = (c >> 4).view(
            *codes.shape[:2], 8, 32
        )  # bit 2c / 2c+1 of qh[j] for sub-block 2c / 2c+1
        shifts = torch.arange(8, dtype=torch.uint8).view(8, 1)
        qh = (hb << shifts).sum(-2, dtype=torch.uint8)
        return torch.cat([self._head(d, dmin, scales, mins), qh, qs], -1)

    def decode(self, raw):
        dm = fp16_from_bytes(raw[..., :4])
        sc, m = _unpack_scale_min_k4(raw[..., 4:16])
        qh = raw[..., 16:48].unsqueeze(-2)  # (…, 1, 32)
        qs = raw[..., 48:].reshape(*raw.shape[:2], 4, 1, 32)
        lo = torch.cat([qs & 0xF, qs >> 4], -2).reshape(*raw.shape[:2], 8, 32)
        shifts = torch.arange(8, dtype=torch.uint8).view(8, 1)
        q = lo | (((qh >> shifts) & 1) << 4)
        return q.reshape(*raw.shape[:2], 256), dm[..., 0], dm[..., 1], sc, m


class Q6KCodec(BlockCodec):
    """block_q6_K: ql[128], qh[64], int8 scales[16], fp16 d (210 bytes); x = d*sc*(q - 32).

    quantize_row_q6_K_ref: make_qx_quants(16, 32, rmse_type 1) per 16-element sub-block.
    """

    name, ggml_type, block_size, type_size = "q6_k", int(_T.Q6_K), QK_K, 210
    chunk_values = 1 << 17

    def _quantize_blocks(self, blocks):
        rows, nb, _ = blocks.shape
        scales, lv = make_qx_quants(blocks.reshape(-1, 16), 32, None)
        return self._finish(blocks, scales.view(rows, nb, 16), lv.view(rows, nb, 16, 16))

    def _quantize_blocks_weighted(self, blocks, rows, imp):
        # quantize_row_q6_K_impl: make_qx_quants(16, 32, x, L, 1, qw) with the raw imatrix
        rws, nb, _ = blocks.shape
        w = imp.unsqueeze(0).expand(rws, -1, -1).reshape(-1, 16)
        scales, lv = make_qx_quants(blocks.reshape(-1, 16), 32, w)
        return self._finish(blocks, scales.view(rws, nb, 16), lv.view(rws, nb, 16, 16))

    def _finish(self, blocks, scales, lv):
        rows, nb, _ = blocks.shape
        amax_idx = scales.abs().argmax(-1, keepdim=True)
        max_scale = torch.gather(scales, -1, amax_idx).squeeze(-1)
        zero = max_scale.abs() < GROUP_MAX_EPS
        iscale = rdiv(-128.0, torch.where(zero, 1.0, max_scale))
        d = (rdiv(1.0, iscale)).to(torch.float16).to(torch.float32)
        ls = nearest_int(iscale.unsqueeze(-1) * scales).clamp(max=127)
        ds = d.unsqueeze(-1) * ls.to(torch.float32)
        ok = ds != 0
        x = blocks.view(rows, nb, 16, 16)
        q = nearest_int(x / torch.where(ok, ds, 1.0).unsqueeze(-1)).clamp(-32, 31) + 32
        lv = torch.where(ok.unsqueeze(-1), q, lv.to(torch.int32)).reshape(rows, nb, 256)
        out = self.encode(lv, d, ls)
        return torch.where(zero.unsqueeze(-1), torch.zeros_like(out), out)  # memset 0, d = 0

    def encode(self, codes, d, scales):
        """codes (rows, nb, 256) 0..63, d (rows, nb), scales (rows, nb, 16) int -128..127."""
        c = codes.to(torch.uint8).view(*codes.shape[:2], 2, 4, 32)  # [half][quarter][l]
        lo = c & 0xF
        ql = torch.cat(
            [lo[..., 0, :] | (lo[..., 2, :] << 4), lo[..., 1, :] | (lo[..., 3, :] << 4)], -1
        )
        hi = c >> 4
        qh = hi[..., 0, :] | (hi[..., 1, :] << 2) | (hi[..., 2, :] << 4) | (hi[..., 3, :] << 6)
        sc = scales.to(torch.int32).to(torch.int8).view(torch.uint8)
        return torch.cat(
            [
                ql.reshape(*c.shape[:2], 128),
                qh.reshape(*c.shape[:2], 64),
                sc,
                fp16_bytes(d.unsqueeze(-1)),
            ],
            -1,
        )

    def decode(self, raw):
        ql = raw[..., :128].reshape(*raw.shape[:2], 2, 1, 64)
        qh = raw[..., 128:192].reshape(*raw.shape[:2], 2, 1, 32)
        sc = raw[..., 192:208].contiguous().view(torch.int8)
        d = fp16_from_bytes(raw[..., 208:210]).squeeze(-1)
        lo = torch.cat(
            [ql[..., :32] & 0xF, ql[..., 32:] & 0xF, ql[..., :32] >> 4, ql[..., 32:] >> 4], -2
        )
        shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8).view(4, 1)
        q = lo | (((qh >> shifts) & 3) << 4)
        return q.reshape(*raw.shape[:2], 256), d, sc

    def grid(self, raw):
        """x = (d * sc) * (q - 32) per 16-element sub-block, stored q in 0..63."""
        _, d, sc = self.decode(raw)
        ds = per_element(d.unsqueeze(-1) * sc.to(torch.float32), 16)
        return BlockGrid(ds, torch.zeros_like(ds), uniform_levels(-32, 31))

    def _dequantize_blocks(self, raw):
        q, d, sc = self.decode(raw)
        ds = d.unsqueeze(-1) * sc.to(torch.float32)
        x = ds.unsqueeze(-1) * (q.view(*q.shape[:2], 16, 16).to(torch.int32) - 32).to(torch.float32)
        return x.reshape(q.shape)
