"""The legacy 32-element ggml blocks: Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 (ggml-quants.c).

Round to nearest (importance=None) follows quantize_row_<type>_ref line by line in float32
(the same divisions, reciprocals and C casts), so the bytes are identical to llama.cpp's on
every block: no step depends on a summation order.

Each codec also exposes encode(codes, d, m=None) / decode(raw) so an algorithm (GPTQ/AWQ) can
pick its own integer codes and scales inside ggml's grid and still write ggml's bytes:
codes are the stored unsigned values (Q8_0: signed int8), d and m the per-block fp32 scale
and min (rounded to fp16 on encode, as ggml stores them).
"""

from __future__ import annotations

import torch

from .common import (
    BlockCodec,
    BlockGrid,
    GGMLType,
    fp16_bytes,
    fp16_from_bytes,
    pack_bits32,
    pack_nibbles,
    per_element,
    rdiv,
    roundf,
    sqrtf,
    uniform_levels,
    unpack_bits32,
    unpack_nibbles,
)
from .search import make_qkx2_quants, make_qx_quants, seq_sum, signed_absmax

QK = 32
_T = GGMLType


def _recip(d: torch.Tensor) -> torch.Tensor:
    """ggml's id = d ? 1.0f/d : 0.0f."""
    return torch.where(
        d != 0, rdiv(1.0, torch.where(d != 0, d, torch.ones_like(d))), torch.zeros_like(d)
    )


def _imatrix_weights(blocks: torch.Tensor, rows: torch.Tensor, imp: torch.Tensor) -> torch.Tensor:
    """weight[j] = qw[j] * sqrtf(sigma2 + x[j]^2), sigma2 = sum_x2 / n_per_row over the row,
    summed in float32 element by element (the legacy quantize_row_*_impl)."""
    sigma2 = seq_sum(rows * rows) / rows.shape[-1]
    return imp.unsqueeze(0) * sqrtf(sigma2.view(-1, 1, 1) + blocks * blocks)


class Q80Codec(BlockCodec):
    """block_q8_0: fp16 d, int8 qs[32]; x = d * q. quantize_row_q8_0_ref (quantize_q8_0 ignores
    an imatrix, so importance changes nothing)."""

    name, ggml_type, block_size, type_size = "q8_0", int(_T.Q8_0), QK, 34
    native_rtn = False  # torch is faster here (docs/decisions.md, "GGUF RTN in C")

    def _quantize_blocks(self, blocks):
        d = blocks.abs().amax(dim=-1, keepdim=True) / 127
        v = blocks * _recip(d)
        out = torch.empty((*blocks.shape[:2], self.type_size), dtype=torch.uint8)
        out[..., :2] = fp16_bytes(d)
        out[..., 2:].view(torch.int8).copy_(roundf(v))  # |roundf(v)| <= 127
        return out

    def _quantize_blocks_weighted(self, blocks, rows, imp):
        return self._quantize_blocks(blocks)

    def encode(
        self, codes: torch.Tensor, d: torch.Tensor, m: torch.Tensor | None = None
    ) -> torch.Tensor:
        """codes int (rows, nb, 32) in -128..127, d (rows, nb) -> bytes (rows, nb, 34)."""
        qs = codes.to(torch.int32).to(torch.int8).view(torch.uint8)
        return torch.cat([fp16_bytes(d.unsqueeze(-1)), qs], dim=-1)

    def decode(self, raw: torch.Tensor):
        """bytes (rows, nb, 34) -> (codes int8 (rows, nb, 32), d fp32 (rows, nb), None)."""
        return (
            raw[..., 2:].contiguous().view(torch.int8),
            fp16_from_bytes(raw[..., :2]).squeeze(-1),
            None,
        )

    def grid(self, raw):
        """x = d * q, q in -128..127 (stored as int8)."""
        _, d, _ = self.decode(raw)
        scale = per_element(d.unsqueeze(-1), QK)
        return BlockGrid(scale, torch.zeros_like(scale), uniform_levels(-128, 127), -128)

    def _dequantize_blocks(self, raw):
        q, d, _ = self.decode(raw)
        return q.to(torch.float32) * d.unsqueeze(-1)


class _SymNibble(BlockCodec):
    """Q4_0 / Q5_0: x = d * (q - offset), d = signed absmax / -offset.

    quantize_row_q4_0_ref / quantize_row_q5_0_ref.
    """

    bits = 4
    search_chunk_values = 1 << 17  # make_qx_quants' 19 candidate scales: (32, 19, N) temporaries

    @property
    def offset(self) -> int:
        return 1 << (self.bits - 1)

    def _quantize_blocks(self, blocks):
        off = self.offset
        d = signed_absmax(blocks).unsqueeze(-1) / -off
        # (int8_t)(x*id + off + 0.5): the sum is in [0.5, 2 off + 0.5], so the uint8 cast
        # truncates it as C's cast does
        q = (blocks * _recip(d)).add_(off + 0.5).to(torch.uint8).clamp_(max=2 * off - 1)
        return self.encode(q, d.squeeze(-1))

    def _quantize_blocks_weighted(self, blocks, rows, imp):
        # quantize_row_q{4,5}_0_impl: weight = qw * sqrt(sigma2 + x^2), make_qx_quants(32, off)
        w = _imatrix_weights(blocks, rows, imp)
        rws, nb, _ = blocks.shape
        d, codes = make_qx_quants(blocks.reshape(-1, QK), self.offset, w.reshape(-1, QK))
        return self.encode(codes.view(rws, nb, QK), d.view(rws, nb))

    def grid(self, raw):
        """x = d * (q - offset), stored q in 0..2^bits - 1."""
        _, d, _ = self.decode(raw)
        scale = per_element(d.unsqueeze(-1), QK)
        levels = uniform_levels(-self.offset, self.offset - 1)
        return BlockGrid(scale, torch.zeros_like(scale), levels)

    def _dequantize_blocks(self, raw):
        q, d, _ = self.decode(raw)
        return (q.to(torch.int32) - self.offset).to(torch.float32) * d.unsqueeze(-1)


class _AsymNibble(BlockCodec):
    """Q4_1 / Q5_1: x = d * q + m, d = (max - min) / (2^bits - 1), m = min.

    quantize_row_q4_1_ref / quantize_row_q5_1_ref.
    """

    bits = 4

    def _quantize_blocks(self, blocks):
        qmax = (1 << self.bits) - 1
        mn = blocks.amin(dim=-1, keepdim=True)
        mx = blocks.amax(dim=-1, keepdim=True)
        d = (mx - mn) / qmax
        # (x - min)*id + 0.5 is in [0.5, qmax + 0.5]: the uint8 cast truncates like C's
        q = (blocks - mn).mul_(_recip(d)).add_(0.5).to(torch.uint8)
        if self.bits == 4:  # quantize_row_q4_1_ref clamps with MIN(15, ...); q5_1_ref does not
            q = q.clamp_(max=qmax)
        return self.encode(q, d.squeeze(-1), mn.squeeze(-1))

    def _quantize_blocks_weighted(self, blocks, rows, imp):
        # quantize_row_q{4,5}_1_impl: make_qkx3_quants(32, nmax, -0.9, 0.05, 36), m = -min
        # (make_qkx3_quants with weights is make_qkx2_quants line for line)
        w = _imatrix_weights(blocks, rows, imp)
        rws, nb, _ = blocks.shape
        qmax = (1 << self.bits) - 1
        d, the_min, codes = make_qkx2_quants(
            blocks.reshape(-1, QK), w.reshape(-1, QK), qmax, -0.9, 0.05, 36
        )
        return self.encode(codes.view(rws, nb, QK), d.view(rws, nb), -the_min.view(rws, nb))

    def grid(self, raw):
        """x = d * q + m, q in 0..2^bits - 1."""
        _, d, m = self.decode(raw)
        return BlockGrid(
            per_element(d.unsqueeze(-1), QK),
            per_element(m.unsqueeze(-1), QK),
            uniform_levels(0, (1 << self.bits) - 1),
        )

    def _dequantize_blocks(self, raw):
        q, d, m = self.decode(raw)
        return q.to(torch.float32) * d.unsqueeze(-1) + m.unsqueeze(-1)


class Q40Codec(_SymNibble):
    """block_q4_0: fp16 d, qs[16] (element j low nibble, j+16 high nibble)."""

    name, ggml_type, block_size, type_size, bits = "q4_0", int(_T.Q4_0), QK, 18, 4
    native_rtn = False  # torch is faster here (docs/decisions.md, "GGUF RTN in C")

    def encode(self, codes, d, m=None):
        """codes (rows, nb, 32) in 0..15, d (rows, nb) -> bytes (rows, nb, 18)."""
        return torch.cat([fp16_bytes(d.unsqueeze(-1)), pack_nibbles(codes)], dim=-1)

    def decode(self, raw):
        return unpack_nibbles(raw[..., 2:]), fp16_from_bytes(raw[..., :2]).squeeze(-1), None


class Q41Codec(_AsymNibble):
    """block_q4_1: fp16 d, fp16 m, qs[16]."""

    name, ggml_type, block_size, type_size, bits = "q4_1", int(_T.Q4_1), QK, 20, 4
    native_rtn = False  # torch is faster here (docs/decisions.md, "GGUF RTN in C")

    def encode(self, codes, d, m=None):
        """codes (rows, nb, 32) in 0..15, d and m (rows, nb) -> bytes (rows, nb, 20)."""
        return torch.cat([fp16_bytes(torch.stack([d, m], dim=-1)), pack_nibbles(codes)], dim=-1)

    def decode(self, raw):
        dm = fp16_from_bytes(raw[..., :4])
        return unpack_nibbles(raw[..., 4:]), dm[..., 0], dm[..., 1]


def _pack5(codes: torch.Tensor) -> torch.Tensor:
    """5-bit codes (..., 32) -> qh (4 bytes, bit j = 5th bit of element j) + qs (16 bytes)."""
    c = codes.to(torch.int32)
    return torch.cat([pack_bits32((c >> 4) & 1), pack_nibbles(c & 0x0F)], dim=-1)


def _unpack5(b: torch.Tensor) -> torch.Tensor:
    return unpack_nibbles(b[..., 4:]) | (unpack_bits32(b[..., :4]) << 4)


class Q50Codec(_SymNibble):
    """block_q5_0: fp16 d, uint32 qh (5th bits), qs[16] (low nibbles)."""

    name, ggml_type, block_size, type_size, bits = "q5_0", int(_T.Q5_0), QK, 22, 5

    def encode(self, codes, d, m=None):
        """codes (rows, nb, 32) in 0..31, d (rows, nb) -> bytes (rows, nb, 22)."""
        return torch.cat([fp16_bytes(d.unsqueeze(-1)), _pack5(codes)], dim=-1)

    def decode(self, raw):
        return _unpack5(raw[..., 2:]), fp16_from_bytes(raw[..., :2]).squeeze(-1), None


class Q51Codec(_AsymNibble):
    """block_q5_1: fp16 d, fp16 m, uint32 qh, qs[16]."""

    name, ggml_type, block_size, type_size, bits = "q5_1", int(_T.Q5_1), QK, 24, 5

    def encode(self, codes, d, m=None):
        """codes (rows, nb, 32) in 0..31, d and m (rows, nb) -> bytes (rows, nb, 24)."""
        return torch.cat([fp16_bytes(torch.stack([d, m], dim=-1)), _pack5(codes)], dim=-1)

    def decode(self, raw):
        dm = fp16_from_bytes(raw[..., :4])
        return _unpack5(raw[..., 4:]), dm[..., 0], dm[..., 1]
