"""Shared pieces of the GGUF block codecs: the codec base class, fp16 fields, C-like rounding.

ggml stores every block as a packed C struct (ggml-common.h); the codecs build those bytes
with torch on whole tensors at once (rows, blocks, ...), never looping over blocks in Python.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lowbit.errors import UnsupportedFormatError

from . import native as blocks_native


def fp16_bytes(v: torch.Tensor) -> torch.Tensor:
    """float32 (..., n) -> uint8 (..., 2n): GGML_FP32_TO_FP16 (round half to even), LE."""
    return v.to(torch.float16).contiguous().view(torch.uint8)


def fp16_from_bytes(b: torch.Tensor) -> torch.Tensor:
    """uint8 (..., 2n) -> float32 (..., n): GGML_FP16_TO_FP32 (exact)."""
    return b.contiguous().view(torch.float16).to(torch.float32)


# the largest float32 below 0.5 (0.5 - 2^-25)
_BELOW_HALF = float.fromhex("0x1.fffffep-2")


def roundf(v: torch.Tensor) -> torch.Tensor:
    """C roundf (halves away from zero), exactly, as trunc(v + copysign(0.5 - 2^-25, v)).

    torch.round rounds halves to even, and trunc(v + 0.5) is wrong for 0.49999997 (the sum
    rounds up to 1.0). With the addend just below 1/2, for v >= 0 with n = floor(v): a
    fraction >= 1/2 gives a sum >= n + 1 - 2^-25, which rounds to n + 1 or above (the tie at
    1 - 2^-25 rounds to even, 1.0); a fraction < 1/2 is at most 1/2 - ulp(v), and the sum
    stays at most n + 1 - ulp(v) - 2^-25, below the float before n + 1 (the same ulp, as
    [n, n + 1) lies in one binade for n >= 1; below 1 the sum is at most 1 - 2^-24). Above
    2^23 v is an integer and the addend is under half an ulp. Negative v mirrors this: v - c
    is exactly -(|v| + c), so the result is computed as copysign(floor(|v| + c), v) (floor
    equals trunc on the non-negative sum, and torch's CPU floor is ~10x faster than trunc)."""
    return torch.floor(v.abs().add_(_BELOW_HALF)).copysign_(v)


def pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """(..., 2h) codes in 0..15 -> (..., h) bytes: ggml's qs[j] = q[j] | q[j + h] << 4."""
    h = q.shape[-1] // 2
    q = q.to(torch.uint8)
    return (q[..., :h] & 0x0F) | ((q[..., h:] & 0x0F) << 4)


def unpack_nibbles(b: torch.Tensor) -> torch.Tensor:
    """Inverse of pack_nibbles: (..., h) bytes -> (..., 2h) codes 0..15 (uint8)."""
    return torch.cat([b & 0x0F, b >> 4], dim=-1)


def pack_bits32(bits: torch.Tensor) -> torch.Tensor:
    """(..., 32) bits (0/1) -> (..., 4) bytes: the uint32 qh of Q5_0/Q5_1, bit j = element j,
    stored little endian."""
    b = bits.to(torch.uint8).reshape(*bits.shape[:-1], 4, 8)
    weights = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)
    return (b * weights).sum(dim=-1, dtype=torch.uint8)


def unpack_bits32(b: torch.Tensor) -> torch.Tensor:
    """(..., 4) bytes -> (..., 32) bits as uint8 0/1 (inverse of pack_bits32)."""
    shifts = torch.arange(8, dtype=torch.uint8)
    return ((b.unsqueeze(-1) >> shifts) & 1).reshape(*b.shape[:-1], 32)


@dataclass(frozen=True)
class BlockGrid:
    """The values a tensor's blocks can hold with their parameters fixed: element i of a block
    may take scale[i] * levels[c - code_min] + offset[i] for any stored code c.

    scale, offset: float32 (rows, nblocks, block_size), one entry per element (the block's
    or sub-block's scale and offset, repeated); levels: float32 (L,) ascending, the integer
    grid of the type (uniform for q*_0/q*_1/k-quants, ggml's kvalues_iq4nl for iq4_nl);
    code_min: the smallest stored code (-128 for q8_0's int8 codes, else 0).
    """

    scale: torch.Tensor
    offset: torch.Tensor
    levels: torch.Tensor
    code_min: int = 0

    def values(self, codes: torch.Tensor) -> torch.Tensor:
        """The float32 values of stored ``codes`` (shape of scale, or any slice of it that the
        caller passes with matching scale/offset via :meth:`sliced`): exactly what ggml's
        dequantize_row_<type> gives for these bytes."""
        lv = self.levels[(codes.to(torch.int64) - self.code_min)]
        return self.scale * lv + self.offset

    def nearest(self, x: torch.Tensor) -> torch.Tensor:
        """The stored code whose value is nearest to float ``x`` (same shape as scale), int32.

        Works in level units u = (x - offset) / divisor() (a negative scale flips the axis,
        the nearest level is still the nearest value); halfway cases go to the upper level
        (``midpoints``). Where scale is 0 every code gives the same value and the code of the
        level nearest 0 is returned."""
        u = (x - self.offset) / self.divisor()
        idx = torch.searchsorted(self.midpoints(), u.contiguous(), right=True)
        return idx.to(torch.int32) + self.code_min

    def midpoints(self) -> torch.Tensor:
        """The boundaries between neighbouring levels: u in level units rounds to level
        ``searchsorted(midpoints, u, right=True)`` (halfway up)."""
        return (self.levels[1:] + self.levels[:-1]) / 2

    def divisor(self) -> torch.Tensor:
        """scale, with +inf where it is 0: (x - offset) / divisor is x in level units, and 0
        (the level nearest 0) on a zero scale."""
        return torch.where(self.scale == 0, torch.inf, self.scale)

    def sliced(self, cols: slice) -> BlockGrid:
        """The grid of some elements of each block (``cols`` indexes the last axis)."""
        return BlockGrid(self.scale[..., cols], self.offset[..., cols], self.levels, self.code_min)


def uniform_levels(lo: int, hi: int) -> torch.Tensor:
    """The integer levels lo..hi as float32: the grid of every linear ggml type."""
    return torch.arange(lo, hi + 1, dtype=torch.float32)


def per_element(v: torch.Tensor, n: int) -> torch.Tensor:
    """(rows, nb, groups) per-(sub-)block parameters -> (rows, nb, groups * n), each repeated
    over its n elements (for BlockGrid)."""
    return v.to(torch.float32).repeat_interleave(n, dim=-1)


class BlockCodec:
    """One ggml block type: its geometry and its quantize/dequantize of whole tensors.

    Subclasses set name, ggml_type, block_size, type_size and implement _quantize_blocks
    (float32 (rows, nblocks, block_size) -> uint8 (rows, nblocks, type_size)) and
    _dequantize_blocks (the inverse direction, float32 out).
    """

    name: str = ""
    ggml_type: int = -1
    block_size: int = 0
    type_size: int = 0
    chunk_values: int = 1 << 20  # values per quantized row chunk (see quantize)
    # with an importance, the chunk is at most this: the weighted searches' candidate
    # temporaries want smaller chunks than plain elementwise rounding
    search_chunk_values: int = 1 << 18
    # RTN through ggml's own C quantizer (blocks/native.py) when it is built; False where
    # the torch codec measured faster (Q8_0, Q4_0, Q4_1, IQ4_NL)
    native_rtn: bool = True

    def nbytes(self, shape: tuple[int, ...] | torch.Size) -> int:
        """Bytes of a tensor of this shape in this type (the last dimension is the row)."""
        k = int(shape[-1])
        self._check_k(k)
        return math.prod(int(s) for s in shape) // self.block_size * self.type_size

    def _check_k(self, k: int) -> None:
        if k % self.block_size:
            raise UnsupportedFormatError(
                f"{self.name}: row length {k} is not a multiple of the block size {self.block_size}"
            )

    def quantize(
        self, x: torch.Tensor, importance: torch.Tensor | None = None, *, native: bool = True
    ) -> torch.Tensor:
        """float32 (rows, K) -> uint8 (rows, K // block_size * type_size), ggml's bytes.

        importance=None is llama.cpp's quantize_row_<type>_ref; with a per-column importance
        (imatrix, length K) it is ggml's quantize_<type> with quant_weights.
        native: without an importance, use ggml's own C quantizers (blocks/native.py) when
        they were built; False runs the torch codec (the same bytes, slower; for tests).
        """
        if x.dim() != 2:
            raise UnsupportedFormatError(f"{self.name}: quantize takes a 2-D (rows, K) tensor")
        rows, k = x.shape
        self._check_k(k)
        x = x.detach().to(torch.float32).contiguous()
        nb = k // self.block_size
        if importance is None and native and self.native_rtn and blocks_native.available():
            return blocks_native.quantize_rows(self.ggml_type, x, nb * self.type_size)
        imp = None
        if importance is not None:
            imp = importance.detach().to(torch.float32).reshape(-1)
            if imp.numel() != k:
                raise UnsupportedFormatError(
                    f"{self.name}: importance has {imp.numel()} values for rows of {k}"
                )
            imp = imp.reshape(nb, self.block_size)
        out = torch.empty((rows, nb * self.type_size), dtype=torch.uint8)
        # rows in chunks of about chunk_values values: the temporaries of the searches stay
        # in cache, and their memory stays small next to the tensor's
        chunk = (
            self.chunk_values if imp is None else min(self.chunk_values, self.search_chunk_values)
        )
        step = max(1, chunk // k)
        for r0 in range(0, rows, step):
            part = x[r0 : r0 + step]
            blocks = part.reshape(part.shape[0], nb, self.block_size)
            if imp is None:
                enc = self._quantize_blocks(blocks)
            else:
                enc = self._quantize_blocks_weighted(blocks, part, imp)
            out[r0 : r0 + step] = enc.reshape(part.shape[0], -1)
        return out

    def dequantize(self, raw: torch.Tensor, k: int) -> torch.Tensor:
        """uint8 (rows, nbytes) -> float32 (rows, k) (ggml's dequantize_row_<type>)."""
        self._check_k(k)
        raw = raw.reshape(raw.shape[0] if raw.dim() > 1 else 1, -1)
        nb = k // self.block_size
        if raw.shape[1] != nb * self.type_size:
            raise UnsupportedFormatError(
                f"{self.name}: {raw.shape[1]} bytes per row, expected {nb * self.type_size}"
            )
        return self._dequantize_blocks(raw.reshape(raw.shape[0], nb, self.type_size)).reshape(
            raw.shape[0], k
        )

    def grid(self, raw: torch.Tensor) -> BlockGrid:
        """The grid the parameters of these blocks define: bytes (rows, nb, type_size) ->
        BlockGrid whose ``values(decode(raw)[0])`` equals ``dequantize`` exactly. Algorithms
        that choose their own codes inside ggml's grid (GPTQ) round to it and write the codes
        back with :meth:`with_codes`."""
        raise NotImplementedError

    def with_codes(self, raw: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """The bytes (rows, nb, type_size) of these blocks with their parameters kept and
        their codes replaced by ``codes`` (rows, nb, block_size), stored codes as decode gives
        them."""
        return self.encode(codes, *self.decode(raw)[1:])

    def _quantize_blocks(self, blocks: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _quantize_blocks_weighted(
        self, blocks: torch.Tensor, rows: torch.Tensor, imp: torch.Tensor
    ) -> torch.Tensor:
        raise UnsupportedFormatError(
            f"{self.name}: quantization with an importance vector is not implemented yet"
        )

    def _dequantize_blocks(self, raw: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def rdiv(a: float, t: torch.Tensor) -> torch.Tensor:
    """The float32 quotient a / t, correctly rounded like C's a/t. (Python's `a / tensor` is
    torch's reciprocal(t) * a, which differs from a/t in the last bit for most a.)"""
    return torch.div(torch.full_like(t, a), t)


def sqrtf(t: torch.Tensor) -> torch.Tensor:
    """C sqrtf, correctly rounded. torch.sqrt on float32 CPU tensors goes through a vectorized
    (Sleef) path that is off by one ulp for some inputs; the square root in float64 rounded
    to float32 is the correctly rounded float32 result (53 >= 2 * 24 + 2 bits)."""
    return torch.sqrt(t.to(torch.float64)).to(torch.float32)


class GGMLType:
    """ggml_type ids (ggml.h enum ggml_type, = gguf.GGMLQuantizationType): written out so that
    formats/ needs no gguf import (gguf is an optional extra); tests compare them with gguf."""

    Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 = 2, 3, 6, 7, 8
    Q2_K, Q3_K, Q4_K, Q5_K, Q6_K = 10, 11, 12, 13, 14
    IQ4_NL = 20
