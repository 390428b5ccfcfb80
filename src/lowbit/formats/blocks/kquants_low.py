"""The 2- and 3-bit k-quants: Q2_K and Q3_K (ggml-quants.c), 256-element super-blocks of
16 sub-blocks of 16.

Q2_K (quantize_row_q2_K_ref): make_qkx2_quants with |x| weights and absolute error
(use_mad), 4-bit scales and mins against fp16 d and dmin. Q3_K (quantize_row_q3_K_ref):
make_q3_quants (a sequential coordinate search, see search.py), 6-bit signed scales
against one fp16 d. Both sum in float32 in ggml's order.
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
    make_q3_quants,
    make_qkx2_quants,
    make_qp_quants,
    make_qx_quants,
    nearest_int,
    seq_sum,
    signed_absmax,
)

QK_K = 256
_T = GGMLType


def _pack_2bit(codes: torch.Tensor) -> torch.Tensor:
    """codes (rows, nb, 256) 0..3 -> qs (rows, nb, 64): qs[32c + l] holds elements
    128c + l + 32s in bits 2s (the qs loop of quantize_row_q2_K_ref / q3_K_ref)."""
    c = codes.to(torch.uint8).view(*codes.shape[:2], 2, 4, 32)
    qs = c[..., 0, :] | (c[..., 1, :] << 2) | (c[..., 2, :] << 4) | (c[..., 3, :] << 6)
    return qs.reshape(*codes.shape[:2], 64)


def _unpack_2bit(qs: torch.Tensor) -> torch.Tensor:
    q = qs.reshape(*qs.shape[:2], 2, 1, 32)
    shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8).view(4, 1)
    return ((q >> shifts) & 3).reshape(*qs.shape[:2], 256)


class Q2KCodec(BlockCodec):
    """block_q2_K: scales[16] (low nibble scale, high nibble min), qs[64], fp16 d, fp16 dmin
    (84 bytes); x = d*sc*q - dmin*m."""

    name, ggml_type, block_size, type_size = "q2_k", int(_T.Q2_K), QK_K, 84
    chunk_values = 1 << 17

    def _quantize_blocks(self, blocks):
        rows, nb, _ = blocks.shape
        xs = blocks.reshape(-1, 16)
        scales, mins, lv = make_qkx2_quants(xs, xs.abs(), 3, -0.5, 0.1, 15, use_mad=True)
        scales, mins = scales.view(rows, nb, 16), mins.view(rows, nb, 16)
        max_scale = torch.where(scales.amax(-1) > 0, scales.amax(-1), 0.0)
        max_min = torch.where(mins.amax(-1) > 0, mins.amax(-1), 0.0)
        has_s, has_m = max_scale > 0, max_min > 0
        i_s = rdiv(15.0, torch.where(has_s, max_scale, 1.0))
        i_m = rdiv(15.0, torch.where(has_m, max_min, 1.0))
        ls = torch.where(has_s.unsqueeze(-1), nearest_int(i_s.unsqueeze(-1) * scales), 0)
        lm = torch.where(has_m.unsqueeze(-1), nearest_int(i_m.unsqueeze(-1) * mins), 0)
        sc = (ls | (lm << 4)) & 0xFF  # y[i].scales[j] = l; |= l << 4 (uint8)
        d = torch.where(has_s, max_scale / 15.0, 0.0).to(torch.float16).to(torch.float32)
        dmin = torch.where(has_m, max_min / 15.0, 0.0).to(torch.float16).to(torch.float32)
        return self._requantize(blocks, sc, d, dmin, lv)

    def _quantize_blocks_weighted(self, blocks, rows, imp):
        """quantize_row_q2_K_impl: weights qw * sqrt(sigma2 + x^2), sigma2 = sum x^2 / 256,
        make_qkx3_quants(16, 3, -0.9, 0.05, 36), make_qp_quants(16, 15, ..., sw)."""
        rws, nb, _ = blocks.shape
        sigma2 = seq_sum(blocks * blocks) / 256
        x = blocks.view(rws, nb, 16, 16)
        w = imp.view(1, nb, 16, 16) * sqrtf(sigma2.view(rws, nb, 1, 1) + x * x)
        sw = seq_sum(w).reshape(-1, 16)
        scales, mins, lv = make_qkx2_quants(x.reshape(-1, 16), w.reshape(-1, 16), 3, -0.9, 0.05, 36)
        dm, ls = make_qp_quants(scales.view(-1, 16), 15, sw)
        mm, lm = make_qp_quants(mins.view(-1, 16), 15, sw)
        sc = ((ls | (lm << 4)) & 0xFF).view(rws, nb, 16)
        d = dm.view(rws, nb).to(torch.float16).to(torch.float32)
        dmin = mm.view(rws, nb).to(torch.float16).to(torch.float32)
        return self._requantize(blocks, sc, d, dmin, lv)

    def _requantize(self, blocks, sc, d, dmin, lv):
        """Final pass of both paths: codes from fp16 d/dmin and the 4-bit scales/mins."""
        rows, nb, _ = blocks.shape
        ds = d.unsqueeze(-1) * (sc & 0xF).to(torch.float32)
        dm = dmin.unsqueeze(-1) * (sc >> 4).to(torch.float32)
        ok = ds != 0
        x = blocks.view(rows, nb, 16, 16)
        q = nearest_int((x + dm.unsqueeze(-1)) / torch.where(ok, ds, 1.0).unsqueeze(-1)).clamp(0, 3)
        codes = torch.where(ok.unsqueeze(-1), q, lv.view(rows, nb, 16, 16).to(torch.int32))
        return self.encode(codes.reshape(rows, nb, 256), d, dmin, sc & 0xF, sc >> 4)

    def encode(self, codes, d, dmin, scales, mins):
        """codes (rows, nb, 256) 0..3, d/dmin (rows, nb), scales/mins (rows, nb, 16) 0..15."""
        sc = (scales.to(torch.uint8) & 0xF) | (mins.to(torch.uint8) << 4)
        return torch.cat([sc, _pack_2bit(codes), fp16_bytes(torch.stack([d, dmin], -1))], -1)

    def decode(self, raw):
        sc = raw[..., :16]
        dm = fp16_from_bytes(raw[..., 80:84])
        return _unpack_2bit(raw[..., 16:80]), dm[..., 0], dm[..., 1], sc & 0xF, sc >> 4

    def grid(self, raw):
        """x = (d * sc) * q - (dmin * m) per 16-element sub-block, q in 0..3."""
        _, d, dmin, sc, m = self.decode(raw)
        dl = d.unsqueeze(-1) * sc.to(torch.float32)
        ml = dmin.unsqueeze(-1) * m.to(torch.float32)
        return BlockGrid(per_element(dl, 16), per_element(-ml, 16), uniform_levels(0, 3))

    def _dequantize_blocks(self, raw):
        q, d, dmin, sc, m = self.decode(raw)
        dl = d.unsqueeze(-1) * sc.to(torch.float32)
        ml = dmin.unsqueeze(-1) * m.to(torch.float32)
        x = dl.unsqueeze(-1) * q.view(*q.shape[:2], 16, 16).to(torch.float32) - ml.unsqueeze(-1)
        return x.reshape(q.shape)


def _pack_q3_scales(l6: torch.Tensor) -> torch.Tensor:
    """16 six-bit scales (…, 16) 0..63 -> block_q3_K.scales[12]."""
    l6 = l6.to(torch.uint8)
    lo = (l6[..., :8] & 0xF) | ((l6[..., 8:] & 0xF) << 4)
    hi = (l6 >> 4).view(*l6.shape[:-1], 4, 4)  # [j/4][j%4]
    hb = hi[..., 0, :] | (hi[..., 1, :] << 2) | (hi[..., 2, :] << 4) | (hi[..., 3, :] << 6)
    return torch.cat([lo, hb], -1)


def _unpack_q3_scales(s: torch.Tensor) -> torch.Tensor:
    lo = torch.cat([s[..., :8] & 0xF, s[..., :8] >> 4], -1)
    shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8).view(4, 1)
    hi = ((s[..., 8:12].unsqueeze(-2) >> shifts) & 3).reshape(*s.shape[:-1], 16)
    return (lo | (hi << 4)).to(torch.int32) - 32


class Q3KCodec(BlockCodec):
    """block_q3_K: hmask[32], qs[64], scales[12], fp16 d (110 bytes); x = d*sc*(q - 4)."""

    name, ggml_type, block_size, type_size = "q3_k", int(_T.Q3_K), QK_K, 110
    chunk_values = 1 << 18  # make_q3_quants' 80 sequential steps run on (N,) slices

    def _quantize_blocks(self, blocks):
        rows, nb, _ = blocks.shape
        scales, lv = make_q3_quants(blocks.reshape(-1, 16), 4)
        scales = scales.view(rows, nb, 16)
        max_scale = signed_absmax(scales)
        has = max_scale != 0
        iscale = rdiv(-32.0, torch.where(has, max_scale, 1.0))
        l6 = nearest_int(iscale.unsqueeze(-1) * scales).clamp(-32, 31) + 32
        l6 = torch.where(has.unsqueeze(-1), l6, 0)  # memset(scales, 0)
        d = torch.where(has, rdiv(1.0, iscale), 0.0).to(torch.float16).to(torch.float32)
        return self._requantize(blocks, l6, d, lv)

    def _quantize_blocks_weighted(self, blocks, rows, imp):
        """quantize_row_q3_K_impl: weights qw * sqrt(sigma2 + x^2), sigma2 = 2 sum x^2 / 256,
        make_qx_quants(16, 4, ..., weight) per sub-block, make_qx_quants(16, 32, ..., sw)."""
        rws, nb, _ = blocks.shape
        sigma2 = 2 * seq_sum(blocks * blocks) / 256
        x = blocks.view(rws, nb, 16, 16)
        w = imp.view(1, nb, 16, 16) * sqrtf(sigma2.view(rws, nb, 1, 1) + x * x)
        sw = seq_sum(w).reshape(-1, 16)
        scales, lv = make_qx_quants(x.reshape(-1, 16), 4, w.reshape(-1, 16))
        d_block, l6 = make_qx_quants(scales.view(-1, 16), 32, sw)
        d = d_block.view(rws, nb).to(torch.float16).to(torch.float32)
        return self._requantize(blocks, l6.view(rws, nb, 16), d, lv)

    def _requantize(self, blocks, l6, d, lv):
        """Final pass of both paths: codes from fp16 d and the 6-bit signed scales."""
        rows, nb, _ = blocks.shape
        ds = d.unsqueeze(-1) * (l6 - 32).to(torch.float32)
        ok = ds != 0
        x = blocks.view(rows, nb, 16, 16)
        q = nearest_int(x / torch.where(ok, ds, 1.0).unsqueeze(-1)).clamp(-4, 3) + 4
        codes = torch.where(ok.unsqueeze(-1), q, lv.view(rows, nb, 16, 16).to(torch.int32))
        return self.encode(codes.reshape(rows, nb, 256), d, l6 - 32)

    def encode(self, codes, d, scales):
        """codes (rows, nb, 256) 0..7, d (rows, nb), scales (rows, nb, 16) -32..31."""
        c = codes.to(torch.uint8)
        hb = (c >> 2).view(*c.shape[:2], 8, 32)  # element 32b + m -> hmask[m] bit b
        shifts = torch.arange(8, dtype=torch.uint8).view(8, 1)
        hmask = (hb << shifts).sum(-2, dtype=torch.uint8)
        sc = _pack_q3_scales(scales.to(torch.int32) + 32)
        return torch.cat([hmask, _pack_2bit(c & 3), sc, fp16_bytes(d.unsqueeze(-1))], -1)

    def decode(self, raw):
        shifts = torch.arange(8, dtype=torch.uint8).view(8, 1)
        hb = ((raw[..., :32].unsqueeze(-2) >> shifts) & 1).reshape(*raw.shape[:2], 256)
        q = _unpack_2bit(raw[..., 32:96]) | (hb << 2)
        return (
            q,
            fp16_from_bytes(raw[..., 108:110]).squeeze(-1),
            _unpack_q3_scales(raw[..., 96:108]),
        )

    def grid(self, raw):
        """x = (d * sc) * (q - 4) per 16-element sub-block, stored q in 0..7."""
        _, d, sc = self.decode(raw)
        dl = per_element(d.unsqueeze(-1) * sc.to(torch.float32), 16)
        return BlockGrid(dl, torch.zeros_like(dl), uniform_levels(-4, 3))

    def _dequantize_blocks(self, raw):
        q, d, sc = self.decode(raw)
        dl = d.unsqueeze(-1) * sc.to(torch.float32)
        x = dl.unsqueeze(-1) * (q.view(*q.shape[:2], 16, 16).to(torch.int32) - 4).to(torch.float32)
        return x.reshape(q.shape)
