"""WeightFormat: how one weight tensor is stored, as one value.

A format is the code type (``qtypes``), which elements share parameters (``granularity``),
the integer zero-point form and code range, and the dtype the parameters are stored in. Its
exact size for a shape is known before anything is quantized (``nbytes``), so size tables,
budgets and exporters can ask it instead of quantizing. RTN, GPTQ and the containers take
this object; a recipe's JSON-friendly ``WeightSpec`` turns into one with ``weight_format()``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from fractions import Fraction
from math import prod

import torch

from lowbit.errors import InvalidSpecError
from lowbit.formats.affine import AsymmetricForm
from lowbit.formats.granularity import Granularity, PerAxis, PerGroup, param_shape
from lowbit.formats.packing import packed_nbytes
from lowbit.formats.qtypes import CodebookType, FloatType, IntType, LevelsType, QType, get_qtype

SCALE_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


@dataclass(frozen=True)
class WeightFormat:
    """How a weight is stored.

    Attributes:
        qtype: the code type (``get_qtype("int4")``, NF4, TERNARY, FP8_E4M3, FP16, ...).
        granularity: which elements share a scale: PerTensor(), PerAxis(0) (per output
            channel) or PerGroup(size) along the input dimension.
        symmetric: integer formats: no zero point (codes ±qmax) or asymmetric (a zero point or
            offset per block; the codes then are unsigned, see ``of``).
        form: asymmetric integers: "offset" (x' = s·(q - qmin) + Lmin, Lmin stored in
            ``scale_dtype``) or "zero_point" (x' = s·(q - z), z stored as an integer code).
        restricted: symmetric integers: codes ±(2^(b-1) - 1) (zero exact, grid symmetric) or
            the full signed range.
        scale_dtype: storage dtype of scales and offsets (float32, float16 or bfloat16).
    """

    qtype: QType
    granularity: Granularity = PerAxis(0)
    symmetric: bool = True
    form: AsymmetricForm = "offset"
    restricted: bool = True
    scale_dtype: torch.dtype = torch.float32

    def __post_init__(self) -> None:
        if self.scale_dtype not in SCALE_DTYPES.values():
            raise InvalidSpecError(
                f"scale_dtype {self.scale_dtype} is not one of {', '.join(SCALE_DTYPES)}"
            )
        if self.form not in ("offset", "zero_point"):
            raise InvalidSpecError(f"form must be 'offset' or 'zero_point', got {self.form!r}")
        if not self.symmetric and not isinstance(self.qtype, IntType):
            raise InvalidSpecError(
                f"{self.qtype.name} has no asymmetric form; asymmetric formats are integers"
            )

    @classmethod
    def of(
        cls,
        name: str,
        granularity: Granularity = PerAxis(0),
        *,
        symmetric: bool = True,
        form: AsymmetricForm = "offset",
        restricted: bool = True,
        scale_dtype: str | torch.dtype = torch.float32,
    ) -> WeightFormat:
        """The format named ``name`` ("int4", "nf4", ...); an asymmetric integer format
        stores unsigned codes of the same width (int4 asymmetric keeps codes in 0..15)."""
        qtype = get_qtype(name)
        if isinstance(scale_dtype, str):
            if scale_dtype not in SCALE_DTYPES:
                raise InvalidSpecError(
                    f"scale_dtype {scale_dtype!r} is not one of {', '.join(SCALE_DTYPES)}"
                )
            scale_dtype = SCALE_DTYPES[scale_dtype]
        if isinstance(qtype, IntType):
            qtype = IntType(qtype.bits, symmetric)
        return cls(qtype, granularity, symmetric, form, restricted, scale_dtype)

    @property
    def family(self) -> str:
        """The format family: "int", "codebook", "levels", "float8" or "cast" (plain
        fp32/fp16/bf16); each has one RTN and one container (see ``FAMILIES``)."""
        qtype = self.qtype
        if isinstance(qtype, FloatType):
            return "float8" if qtype.scaled else "cast"
        return _FAMILY_OF_TYPE[type(qtype)]

    @property
    def group_size(self) -> int | None:
        """Elements per scale along the input dimension, or None when not grouped."""
        return self.granularity.size if isinstance(self.granularity, PerGroup) else None

    def for_shape(self, shape: tuple[int, ...]) -> WeightFormat:
        """The format as applied to a tensor of ``shape``: conv kernels (more than 2 dims)
        under a group format are stored per output channel, because groups along a kernel's
        last axis would split kernel rows and no conv kernel reads groups."""
        if isinstance(self.granularity, PerGroup) and len(shape) > 2:
            return replace(self, granularity=PerAxis(0))
        return self

    def nbytes(self, shape: tuple[int, ...]) -> int:
        """Exact bytes a tensor of ``shape`` takes in this format: its codes, densely packed,
        plus every stored parameter (what the container's ``nbytes`` reports afterwards)."""
        shape = tuple(int(n) for n in shape)
        n = prod(shape)
        qtype = self.qtype
        if isinstance(qtype, FloatType) and not qtype.scaled:
            return n * qtype.bits // 8  # a plain cast: no parameters
        fmt = self.for_shape(shape)
        n_params = prod(param_shape(shape, fmt.granularity))
        scale_bytes = n_params * torch.finfo(self.scale_dtype).bits // 8
        if isinstance(qtype, FloatType):
            return n * qtype.bits // 8 + scale_bytes
        codes = packed_nbytes(n, qtype.bits)
        if isinstance(qtype, IntType) and not self.symmetric:
            extra = n_params if self.form == "zero_point" else scale_bytes  # a byte each
            return codes + scale_bytes + extra
        return codes + scale_bytes

    def bits_per_weight(self) -> Fraction:
        """Nominal storage bits per weight: code bits plus, for grouped formats, the
        parameters' bits spread over a group (int4 with an fp16 scale per 128: 4.125).
        Per-tensor and per-channel parameters cost a few bytes per tensor or row and are not
        counted here; ``nbytes`` gives a shape's exact figure."""
        if isinstance(self.qtype, FloatType) and not self.qtype.scaled:
            return Fraction(self.qtype.bits)
        if self.group_size is None:
            return Fraction(self.qtype.bits)
        scale_bits = torch.finfo(self.scale_dtype).bits
        param_bits = scale_bits
        if isinstance(self.qtype, IntType) and not self.symmetric:
            param_bits += 8 if self.form == "zero_point" else scale_bits  # a zero point is a byte
        return self.qtype.bits + Fraction(param_bits, self.group_size)


_FAMILY_OF_TYPE: dict[type, str] = {IntType: "int", CodebookType: "codebook", LevelsType: "levels"}

FAMILIES: tuple[str, ...] = ("int", "codebook", "levels", "float8", "cast")
"""Every format belongs to one family; each family has one RTN and one container (the table
in ``lowbit.algorithms.rtn``), and tests/test_formats/test_weight_format.py fails when one
is missing."""
