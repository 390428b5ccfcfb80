"""Size accounting: how many bits a weight costs in each storage format, scales included.

A grouped format stores a ``bits``-bit code per weight plus, per group of ``group_size``
weights, one scale of ``scale_bits`` and optionally one zero point (or min) of ``zero_bits``:

    bits_per_weight = bits + (scale_bits + zero_bits) / group_size

e.g. int4 with one fp16 scale per 128 weights: 4 + 16/128 = 4.125 bits. Per-tensor and
per-channel scales cost a few bytes per tensor or per row, which is negligible per weight
(an int8 per-channel 4096x4096 matrix: 8 + 16/4096 ≈ 8.004), so those formats count ``bits``
exactly; ``tensor_nbytes`` gives the exact figure for one tensor shape when it matters.

Sizes are exact rationals rounded up to whole bytes; callers print them in decimal units
(1 GB = 1e9 bytes).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from math import prod

from lowbit.errors import InvalidInputError, InvalidSpecError
from lowbit.formats.granularity import Granularity, PerAxis, param_shape


def _bits_per_weight_exact(
    bits: int, group_size: int | None, scale_bits: int, zero_bits: int
) -> Fraction:
    if bits < 1:
        raise InvalidSpecError(f"a code needs at least 1 bit, got bits={bits}")
    if scale_bits < 0 or zero_bits < 0:
        raise InvalidSpecError(
            f"scale_bits and zero_bits must be >= 0, got {scale_bits} and {zero_bits}"
        )
    if group_size is None:
        return Fraction(bits)
    if group_size < 1:
        raise InvalidSpecError(
            f"group_size must be >= 1 (or None for per-tensor/per-channel), got {group_size}"
        )
    return bits + Fraction(scale_bits + zero_bits, group_size)


def bits_per_weight(
    bits: int, group_size: int | None = None, scale_bits: int = 16, zero_bits: int = 0
) -> float:
    """Average storage bits per weight: ``bits + (scale_bits + zero_bits) / group_size``.

    Args:
        bits: bits of one code (4 for int4, 16 for fp16).
        group_size: weights sharing one scale; None for per-tensor or per-channel scales,
            whose cost per weight is negligible and not counted.
        scale_bits: bits of one scale (16 for an fp16 scale, 32 for fp32).
        zero_bits: bits of one zero point or min per group (0 for symmetric formats).
    """
    return float(_bits_per_weight_exact(bits, group_size, scale_bits, zero_bits))


@dataclass(frozen=True)
class SizeFormat:
    """One row of the size table: a storage format and what its bits per weight include."""

    name: str
    bits: int
    group_size: int | None = None
    scale_bits: int = 16
    zero_bits: int = 0
    note: str = ""

    @property
    def bits_per_weight(self) -> float:
        return bits_per_weight(self.bits, self.group_size, self.scale_bits, self.zero_bits)

    def nbytes(self, n_params: int) -> int:
        """Bytes for ``n_params`` weights in this format, rounded up to a whole byte."""
        exact = _bits_per_weight_exact(self.bits, self.group_size, self.scale_bits, self.zero_bits)
        return -(-(n_params * exact) // 8)


# The formats `lowbit size` lists, from most to fewest bits per weight. GGUF figures follow
# ggml's block structs (block_q8_0: 32 int8 + fp16 d; block_q4_0: 32 x 4 bit + fp16 d;
# block_q4_1: fp16 d + fp16 m); nf4 follows bitsandbytes (blocksize 64, fp32 absmax, no
# double quantization).
SIZE_FORMATS: tuple[SizeFormat, ...] = (
    SizeFormat("fp32", 32),
    SizeFormat("fp16", 16),
    SizeFormat("bf16", 16),
    SizeFormat("int8-g32", 8, 32, note="fp16 scale per 32 (= GGUF Q8_0)"),
    SizeFormat("fp8", 8, note="e4m3/e5m2, one scale per tensor"),
    SizeFormat("int8", 8, note="one scale per output channel"),
    SizeFormat("int4-g32-asym", 4, 32, zero_bits=16, note="fp16 scale + min per 32 (= GGUF Q4_1)"),
    SizeFormat("int4-g32", 4, 32, note="fp16 scale per 32 (= GGUF Q4_0)"),
    SizeFormat("nf4-g64", 4, 64, scale_bits=32, note="fp32 absmax per 64 (bitsandbytes)"),
    SizeFormat("int4-g128-asym", 4, 128, zero_bits=16, note="fp16 scale + fp16 zero per 128"),
    SizeFormat("int4-g128", 4, 128, note="fp16 scale per 128"),
    SizeFormat("int4", 4, note="one scale per output channel"),
    SizeFormat("int3-g128", 3, 128, note="fp16 scale per 128"),
    SizeFormat("int3", 3, note="one scale per output channel"),
    SizeFormat("int2-g64", 2, 64, note="fp16 scale per 64"),
    SizeFormat("int2", 2, note="one scale per output channel"),
    SizeFormat("ternary", 2, note="stored in 2 bits; information content log2(3) ≈ 1.58 bits"),
    SizeFormat("binary", 1, note="{-a, +a}, one scale per output channel"),
    SizeFormat("int1", 1, note="codes {-1, 0}, one scale per output channel"),
)


_PER_CHANNEL = PerAxis(0)


@dataclass(frozen=True)
class SizeRow:
    """The size of a model of a given parameter count in one format."""

    name: str
    bits_per_weight: float
    bytes: int
    note: str = ""


def size_table(n_params: int, formats: tuple[SizeFormat, ...] = SIZE_FORMATS) -> list[SizeRow]:
    """The size of ``n_params`` weights in every format of ``formats`` (bytes rounded up).

    Raises InvalidInputError when ``n_params`` is not a positive integer.
    """
    if isinstance(n_params, bool) or not isinstance(n_params, int) or n_params < 1:
        raise InvalidInputError(
            f"the parameter count must be a positive integer, got {n_params!r}; "
            "pass e.g. 176e9 or 7000000000"
        )
    return [SizeRow(f.name, f.bits_per_weight, f.nbytes(n_params), f.note) for f in formats]


def tensor_nbytes(
    shape: tuple[int, ...],
    bits: int,
    granularity: Granularity = _PER_CHANNEL,
    scale_bits: int = 16,
    zero_bits: int = 0,
) -> int:
    """Exact bytes of one tensor: densely packed codes plus its scales (and zero points).

    Codes take ceil(numel·bits/8) bytes (the packing.py layout); scales take
    ceil(n_scales·(scale_bits + zero_bits)/8) bytes, with n_scales from ``param_shape``
    (one per output channel by default; ragged last groups get their own scale).
    """
    if bits < 1:
        raise InvalidSpecError(f"a code needs at least 1 bit, got bits={bits}")
    n_scales = prod(param_shape(tuple(shape), granularity))
    code_bytes = -(-prod(shape) * bits // 8)
    return code_bytes + -(-n_scales * (scale_bits + zero_bits) // 8)
