"""WeightFormat: bits per weight and exact bytes known before quantizing (and equal to what the
container stores afterwards), checked construction, and the registry rule that every format
has a family, an RTN, a container and a golden vector."""

from __future__ import annotations

import pytest
import torch

from lowbit.algorithms import rtn_tensor
from lowbit.algorithms.rtn import RTN_FAMILIES
from lowbit.errors import InvalidSpecError, UnsupportedFormatError
from lowbit.formats.granularity import PerAxis, PerGroup, PerTensor
from lowbit.formats.packing import packed_nbytes
from lowbit.formats.qtypes import FP8_E4M3, FP16, NF4, QTYPES, TERNARY
from lowbit.formats.weight_format import FAMILIES, WeightFormat
from lowbit.tensors import QTENSOR_KINDS, qtensor_from_dict
from lowbit_testkit.format_goldens import FILE, INPUT, golden_case, golden_format
from lowbit_testkit.golden import load_golden


def fmt(name: str, group: int | None = None, **options) -> WeightFormat:
    return WeightFormat.of(name, PerGroup(group) if group else PerAxis(0), **options)


@pytest.mark.parametrize(
    ("format", "expected"),
    [
        (fmt("int4", 128, scale_dtype="float16"), 4.125),
        (fmt("int4", 128, symmetric=False, scale_dtype="float16"), 4.25),  # + fp16 offset
        (fmt("int4", 128, symmetric=False, form="zero_point", scale_dtype="float16"), 4.1875),
        (fmt("int4", 32, scale_dtype="float16"), 4.5),  # GGUF Q4_0's size
        (fmt("int4", 32, symmetric=False, scale_dtype="float16"), 5.0),  # GGUF Q4_1's size
        (fmt("int8", 32, scale_dtype="float16"), 8.5),  # GGUF Q8_0's size
        (WeightFormat(NF4, PerGroup(64)), 4.5),  # fp32 absmax per 64 (bitsandbytes)
        (fmt("int3", 128, scale_dtype="float16"), 3.125),
        (fmt("int2", 64, scale_dtype="float16"), 2.25),
        (fmt("int8"), 8.0),  # per channel: scales are negligible per weight
        (WeightFormat(FP16), 16.0),
    ],
)
def test_bits_per_weight_counts_scales_and_zero_points(format, expected) -> None:
    assert format.bits_per_weight() == expected


def test_exact_bytes_per_channel_and_grouped() -> None:
    shape = (4096, 4096)
    assert fmt("int8", scale_dtype="float16").nbytes(shape) == 4096 * 4096 + 4096 * 2
    groups = 4096 * 4096 // 128
    asym = fmt("int4", 128, symmetric=False, scale_dtype="float16")
    assert asym.nbytes(shape) == 4096 * 4096 // 2 + groups * 4
    g128 = fmt("int4", 128, scale_dtype="float16")  # the average agrees when groups divide
    assert g128.nbytes(shape) * 8 == g128.bits_per_weight() * 4096 * 4096


def test_exact_bytes_ragged_groups_and_3_bit_packing() -> None:
    shape = (3, 100)  # 100 = 64 + 36: two groups per row, the last ragged
    assert fmt("int3", 64, scale_dtype="float16").nbytes(shape) == packed_nbytes(300, 3) + 12
    per_tensor = WeightFormat.of("int2", PerTensor())
    assert per_tensor.nbytes(shape) == packed_nbytes(300, 2) + 4
    assert WeightFormat.of("int4", PerAxis(1), scale_dtype="float16").nbytes(shape) == 150 + 200


def _cases() -> list[tuple[WeightFormat, tuple[int, ...]]]:
    shapes = [(7, 100), (16, 64), (4, 3, 3, 3)]  # ragged groups; even; a conv kernel
    formats = [golden_format(name) for name in QTYPES] + [
        fmt("int4", 32, scale_dtype="float16"),
        fmt("int4", 24, symmetric=False, form="zero_point", scale_dtype="bfloat16"),
        fmt("int8", 32, symmetric=False),
        WeightFormat(NF4, PerGroup(64), scale_dtype=torch.float16),
        WeightFormat(TERNARY, PerAxis(0), scale_dtype=torch.float16),
        WeightFormat(FP8_E4M3, PerAxis(0), scale_dtype=torch.bfloat16),
    ]
    return [(f, s) for f in formats for s in shapes]


@pytest.mark.parametrize(("format", "shape"), _cases(), ids=str)
def test_nbytes_before_quantizing_equals_what_the_container_stores(format, shape) -> None:
    w = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    stored = rtn_tensor(w, format.for_shape(shape))
    assert format.nbytes(shape) == stored.nbytes


def test_conv_kernels_under_a_group_format_are_stored_per_channel() -> None:
    g = fmt("int4", 32)
    assert g.for_shape((8, 4, 3, 3)).granularity == PerAxis(0)
    assert g.for_shape((8, 64)) is g


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda: WeightFormat.of("int9"), UnsupportedFormatError, "known formats"),
        (lambda: WeightFormat.of("int4", PerGroup(0)), InvalidSpecError, "group size"),
        (lambda: fmt("int4", scale_dtype="float64"), InvalidSpecError, "scale_dtype"),
        (lambda: WeightFormat(NF4, symmetric=False), InvalidSpecError, "asymmetric"),
        (lambda: fmt("int4", form="affine"), InvalidSpecError, "form"),
    ],
)
def test_bad_formats_are_refused_with_the_fix(build, error, match) -> None:
    with pytest.raises(error, match=match):
        build()


def test_asymmetric_integers_store_unsigned_codes() -> None:
    assert fmt("int4", symmetric=False).qtype.name == "uint4"
    assert fmt("int4").qtype.name == "int4"


def test_rtn_refuses_a_clip_range_for_non_integer_formats() -> None:
    with pytest.raises(InvalidSpecError, match="integer formats"):
        rtn_tensor(torch.randn(4, 8), WeightFormat(NF4, PerGroup(8)), clip=(-1.0, 1.0))


# ------------------------------------------------------------------- adding a weight format


def test_every_family_has_one_rtn_and_a_registered_container() -> None:
    assert set(FAMILIES) == RTN_FAMILIES
    for name in QTYPES:
        stored = rtn_tensor(torch.tensor(INPUT), golden_format(name))
        assert QTENSOR_KINDS[stored.kind] is type(stored), name
        tensors, meta = stored.to_dict()
        assert torch.equal(qtensor_from_dict(tensors, meta).dequantize(), stored.dequantize())


def test_every_format_has_a_golden_vector_and_matches_it() -> None:
    golden = load_golden(FILE.name)
    assert tuple(map(tuple, golden["input"])) == INPUT
    missing = sorted(set(QTYPES) - set(golden["cases"]))
    assert not missing, (
        f"formats without a golden vector: {missing}; add them by running "
        "python tests/lowbit_testkit/format_goldens.py (see its docstring)"
    )
    for name in QTYPES:
        assert golden_case(name) == golden["cases"][name], name
