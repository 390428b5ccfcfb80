"""Size accounting: how many bytes a model takes in each storage format, scales included.

The formats' own arithmetic is ``WeightFormat.bits_per_weight`` (nominal: code bits plus a
grouped format's parameters spread over the group, e.g. int4 with one fp16 scale per 128
weights: 4 + 16/128 = 4.125), ``WeightFormat.nbytes(shape)`` (exact for one tensor) and, for
GGUF, the block codecs' struct sizes. This module holds the table `lowbit size` prints: the
named WeightFormats and every GGUF block type of ``lowbit.formats.blocks.BLOCK_TYPES``, from
most to fewest bits (a codec added there appears here without an edit).

Sizes are exact rationals rounded up to whole bytes; callers print them in decimal units
(1 GB = 1e9 bytes).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from functools import cache
from typing import TYPE_CHECKING

from lowbit.errors import InvalidInputError
from lowbit.formats.granularity import PerAxis, PerGroup, PerTensor
from lowbit.formats.qtypes import BF16, BINARY, FP8_E4M3, FP16, FP32, NF4, TERNARY
from lowbit.formats.weight_format import WeightFormat

if TYPE_CHECKING:
    from lowbit.formats.blocks import BlockCodec


@dataclass(frozen=True)
class SizeFormat:
    """One row of the size table: a name, its exact bits per weight and what they include."""

    name: str
    bits: Fraction
    note: str = ""

    @classmethod
    def of(cls, name: str, fmt: WeightFormat, note: str = "") -> SizeFormat:
        """A row for one of lowbit's weight formats."""
        return cls(name, fmt.bits_per_weight(), note)

    @classmethod
    def of_block(cls, codec: BlockCodec) -> SizeFormat:
        """A row for a GGUF block type: its struct's bytes over its block's weights."""
        return cls(
            f"gguf-{codec.name}",
            Fraction(8 * codec.type_size, codec.block_size),
            f"GGUF {codec.name.upper()}: {codec.type_size} bytes per {codec.block_size} weights",
        )

    @property
    def bits_per_weight(self) -> float:
        return float(self.bits)

    def nbytes(self, n_params: int) -> int:
        """Bytes for ``n_params`` weights in this format, rounded up to a whole byte."""
        return -(-(n_params * self.bits) // 8)


def _int(name: str, group: int | None = None, **options: bool) -> WeightFormat:
    """An integer format with fp16 scales (the usual storage of grouped formats)."""
    granularity = PerGroup(group) if group else PerAxis(0)
    return WeightFormat.of(name, granularity, scale_dtype="float16", **options)


# lowbit's formats in the table; nf4 follows bitsandbytes (blocksize 64, fp32 absmax, no
# double quantization).
_LOWBIT_FORMATS: tuple[SizeFormat, ...] = (
    SizeFormat.of("fp32", WeightFormat(FP32)),
    SizeFormat.of("fp16", WeightFormat(FP16)),
    SizeFormat.of("bf16", WeightFormat(BF16)),
    SizeFormat.of("int8-g32", _int("int8", 32), "fp16 scale per 32"),
    SizeFormat.of("fp8", WeightFormat(FP8_E4M3, PerTensor()), "e4m3/e5m2, one scale per tensor"),
    SizeFormat.of("int8", _int("int8"), "one scale per output channel"),
    SizeFormat.of(
        "int4-g32-asym",
        _int("int4", 32, symmetric=False),
        "fp16 scale + min per 32",
    ),
    SizeFormat.of("int4-g32", _int("int4", 32), "fp16 scale per 32"),
    SizeFormat.of("nf4-g64", WeightFormat(NF4, PerGroup(64)), "fp32 absmax per 64 (bitsandbytes)"),
    SizeFormat.of(
        "int4-g128-asym", _int("int4", 128, symmetric=False), "fp16 scale + fp16 zero per 128"
    ),
    SizeFormat.of("int4-g128", _int("int4", 128), "fp16 scale per 128"),
    SizeFormat.of("int4", _int("int4"), "one scale per output channel"),
    SizeFormat.of("int3-g128", _int("int3", 128), "fp16 scale per 128"),
    SizeFormat.of("int3", _int("int3"), "one scale per output channel"),
    SizeFormat.of("int2-g64", _int("int2", 64), "fp16 scale per 64"),
    SizeFormat.of("int2", _int("int2"), "one scale per output channel"),
    SizeFormat.of(
        "ternary",
        WeightFormat(TERNARY),
        "stored in 2 bits; information content log2(3) ≈ 1.58 bits",
    ),
    SizeFormat.of("binary", WeightFormat(BINARY), "{-a, +a}, one scale per output channel"),
    SizeFormat.of(
        "int1", _int("int1", restricted=False), "codes {-1, 0}, one scale per output channel"
    ),
)


@cache
def size_formats() -> tuple[SizeFormat, ...]:
    """The formats `lowbit size` lists, from most to fewest bits per weight (a stable sort: a
    lowbit format comes before the GGUF type of the same size). Built on first use: the block
    codecs allocate torch tables when imported, which a bare `import lowbit.formats` (and
    `lowbit inspect` on a hostile file, measured in tests) should not pay for."""
    from lowbit.formats.blocks import BLOCK_TYPES

    blocks = tuple(SizeFormat.of_block(c) for c in BLOCK_TYPES.values())
    return tuple(sorted(_LOWBIT_FORMATS + blocks, key=lambda f: -f.bits))


@dataclass(frozen=True)
class SizeRow:
    """The size of a model of a given parameter count in one format."""

    name: str
    bits_per_weight: float
    bytes: int
    note: str = ""


def size_table(n_params: int, formats: tuple[SizeFormat, ...] | None = None) -> list[SizeRow]:
    """The size of ``n_params`` weights in every format of ``formats`` (bytes rounded up).

    Raises InvalidInputError when ``n_params`` is not a positive integer.
    """
    if isinstance(n_params, bool) or not isinstance(n_params, int) or n_params < 1:
        raise InvalidInputError(
            f"the parameter count must be a positive integer, got {n_params!r}; "
            "pass e.g. 176e9 or 7000000000"
        )
    chosen = size_formats() if formats is None else formats
    return [SizeRow(f.name, f.bits_per_weight, f.nbytes(n_params), f.note) for f in chosen]
