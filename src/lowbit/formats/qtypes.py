"""What a quantized number is: the table of lowbit's number formats.

Each format is a frozen dataclass saying how many bits a code takes, which values the codes
can hold, and how codes are stored. The facts live in this one table (``QTYPES``); code asks
``get_qtype(name)`` instead of spelling formats out again.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lowbit.errors import UnsupportedFormatError

# The 16 NormalFloat-4 levels: quantiles of N(0, 1) rescaled to [-1, 1], with an exact zero.
# Values as published with QLoRA (Dettmers et al. 2023) and used by bitsandbytes.
NF4_LEVELS: tuple[float, ...] = (
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
)

# Ternary threshold factor: w -> 0 where |w| <= 0.7 * mean|w| (Li & Liu, Ternary Weight
# Networks, 2016), the usual approximation of the optimal threshold for Gaussian weights.
TERNARY_THRESHOLD = 0.7


@dataclass(frozen=True)
class IntType:
    """A signed or unsigned integer of 1 to 8 bits (codes stored in int8/uint8 or packed)."""

    bits: int
    signed: bool

    def __post_init__(self) -> None:
        if not 1 <= self.bits <= 8:
            raise UnsupportedFormatError(
                f"integer formats have 1 to 8 bits, got {self.bits}; pick --bits in 1..8"
            )

    @property
    def name(self) -> str:
        return f"{'int' if self.signed else 'uint'}{self.bits}"

    @property
    def qmin(self) -> int:
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    @property
    def storage(self) -> torch.dtype:
        return torch.int8 if self.signed else torch.uint8


@dataclass(frozen=True)
class FloatType:
    """A floating-point format: fp32/fp16/bf16 casts, and fp8 used with a scale."""

    name: str
    dtype: torch.dtype
    bits: int
    scaled: bool  # fp8 needs a scale to use its small range; fp16/bf16 are plain casts

    @property
    def max(self) -> float:
        return float(torch.finfo(self.dtype).max)

    @property
    def storage(self) -> torch.dtype:
        return self.dtype


@dataclass(frozen=True)
class CodebookType:
    """Codes index a fixed table of levels in [-1, 1], scaled by absmax (NF4)."""

    name: str
    levels: tuple[float, ...]

    @property
    def bits(self) -> int:
        return (len(self.levels) - 1).bit_length()

    @property
    def storage(self) -> torch.dtype:
        return torch.uint8

    def level_tensor(self) -> torch.Tensor:
        return torch.tensor(self.levels, dtype=torch.float32)


@dataclass(frozen=True)
class LevelsType:
    """Binary {-a, +a} or ternary {-a, 0, +a}: one learned magnitude ``a`` per group."""

    name: str
    levels: tuple[int, ...]  # the integer values a code stands for, in code order

    @property
    def bits(self) -> int:
        return (len(self.levels) - 1).bit_length()

    @property
    def storage(self) -> torch.dtype:
        return torch.uint8


QType = IntType | FloatType | CodebookType | LevelsType

FP32 = FloatType("fp32", torch.float32, 32, scaled=False)
FP16 = FloatType("fp16", torch.float16, 16, scaled=False)
BF16 = FloatType("bf16", torch.bfloat16, 16, scaled=False)
FP8_E4M3 = FloatType("fp8_e4m3", torch.float8_e4m3fn, 8, scaled=True)
FP8_E5M2 = FloatType("fp8_e5m2", torch.float8_e5m2, 8, scaled=True)
NF4 = CodebookType("nf4", NF4_LEVELS)
BINARY = LevelsType("binary", (-1, 1))
TERNARY = LevelsType("ternary", (-1, 0, 1))

QTYPES: dict[str, QType] = {
    **{f"int{b}": IntType(b, True) for b in range(1, 9)},
    **{f"uint{b}": IntType(b, False) for b in range(1, 9)},
    **{t.name: t for t in (FP32, FP16, BF16, FP8_E4M3, FP8_E5M2, NF4, BINARY, TERNARY)},
}


def get_qtype(name: str) -> QType:
    """Look up a format by name ("int4", "uint8", "fp8_e4m3", "nf4", "ternary", ...)."""
    try:
        return QTYPES[name]
    except KeyError:
        known = ", ".join(QTYPES)
        raise UnsupportedFormatError(f"unknown format {name!r}; known formats: {known}") from None
