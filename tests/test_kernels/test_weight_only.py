"""aten weight-only kernels (int8pack, int4pack) against the reference kernel."""

from __future__ import annotations

import pytest
import torch

from lowbit.algorithms import rtn_tensor
from lowbit.formats.granularity import PerAxis, PerGroup
from lowbit.formats.qtypes import IntType
from lowbit.formats.sqnr import sqnr_db
from lowbit.formats.weight_format import WeightFormat
from lowbit.kernels import DEFAULT_REGISTRY, LayerSpec
from lowbit.kernels.weight_only import int4pack_codes, int4pack_scale_zero
from lowbit_testkit.kernel_helpers import int8_weight, run_pair

W8 = "int8 weight-only (aten._weight_int8pack_mm, bf16)"
W4 = "int4 weight-only (aten._weight_int4pack_mm_for_cpu, bf16)"
SPEC = LayerSpec("linear", "weight_only")
# bf16 keeps 8 significant bits: rounding the activations, the scales (and zeros) and the
# output each costs ~2^-9 relative, about 50 dB together; 40 dB leaves margin for sums
# that cancel, and still fails for any layout or conversion mistake (those give < 10 dB).
BF16_FLOOR_DB = 40

INT4_FORMS = [
    dict(qtype=IntType(4, True), symmetric=True),
    dict(qtype=IntType(4, True), symmetric=True, restricted=False),
    dict(qtype=IntType(4, False), symmetric=False, form="offset"),
    dict(qtype=IntType(4, True), symmetric=False, form="offset"),
    dict(qtype=IntType(4, False), symmetric=False, form="zero_point"),
    dict(qtype=IntType(4, True), symmetric=False, form="zero_point"),
    # 1-3-bit codes widen exactly into the int4 layout
    dict(qtype=IntType(3, True), symmetric=True),
    dict(qtype=IntType(3, True), symmetric=False, form="zero_point"),
    dict(qtype=IntType(2, False), symmetric=False, form="offset"),
    dict(qtype=IntType(2, True), symmetric=True, restricted=False),
    dict(qtype=IntType(1, False), symmetric=False, form="zero_point"),
]


@pytest.mark.parametrize("batch", [1, 3, 32])
@pytest.mark.parametrize(("k", "n"), [(64, 32), (48, 19)])
@pytest.mark.parametrize("relu", [False, True])
def test_int8pack_matches_reference(batch: int, k: int, n: int, relu: bool) -> None:
    w, b = int8_weight(n, k), torch.randn(n)
    x = torch.randn(batch, k)
    spec = LayerSpec("linear", "weight_only", relu=relu)
    y, yr = run_pair(DEFAULT_REGISTRY, "linear", w, b, spec, W8, x)
    assert y.dtype == torch.float32 and y.shape == (batch, n)
    assert sqnr_db(yr, y) > BF16_FLOOR_DB


@pytest.mark.parametrize("form", INT4_FORMS, ids=lambda f: f"{f['qtype'].name}-{f.get('form')}")
@pytest.mark.parametrize("group", [32, 128])
def test_int4pack_scale_zero_is_an_exact_conversion(form: dict, group: int) -> None:
    kw = dict(form)
    w = rtn_tensor(torch.randn(16, 256), WeightFormat(kw.pop("qtype"), PerGroup(group), **kw))
    scale, zero = int4pack_scale_zero(w)
    u = int4pack_codes(w).float()
    assert u.min() >= 0 and u.max() <= 15
    u = u.reshape(16, -1, group)
    rebuilt = ((u - 8) * scale[..., None] + zero[..., None]).reshape(16, 256)
    torch.testing.assert_close(rebuilt, w.dequantize(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("form", INT4_FORMS, ids=lambda f: f"{f['qtype'].name}-{f.get('form')}")
@pytest.mark.parametrize("batch", [1, 3, 32])
def test_int4pack_matches_reference(form: dict, batch: int) -> None:
    kw = dict(form)
    w = rtn_tensor(torch.randn(32, 128), WeightFormat(kw.pop("qtype"), PerGroup(32), **kw))
    b = torch.randn(32)
    x = torch.randn(batch, 128)
    y, yr = run_pair(DEFAULT_REGISTRY, "linear", w, b, SPEC, W4, x)
    assert y.shape == (batch, 32)
    assert sqnr_db(yr, y) > BF16_FLOOR_DB


@pytest.mark.parametrize("in_features", [80, 576])
def test_int4pack_pads_a_ragged_last_group(in_features: int) -> None:
    """576 = 4.5 groups of 128 (SmolLM2's hidden size): the kernel pads to whole groups."""
    w = rtn_tensor(torch.randn(32, in_features), WeightFormat(IntType(4, True), PerGroup(128)))
    assert DEFAULT_REGISTRY.get("linear", W4).applies(w, SPEC) is None
    x = torch.randn(3, in_features)
    y, yr = run_pair(DEFAULT_REGISTRY, "linear", w, torch.randn(32), SPEC, W4, x)
    assert y.shape == (3, 32)
    assert sqnr_db(yr, y) > BF16_FLOOR_DB


def test_int4pack_group_sizes_and_fp16_input() -> None:
    w = rtn_tensor(torch.randn(48, 512), WeightFormat(IntType(4, True), PerGroup(256)))
    x = torch.randn(2, 7, 512, dtype=torch.float16)
    y, yr = run_pair(DEFAULT_REGISTRY, "linear", w, None, SPEC, W4, x)
    assert y.shape == (2, 7, 48) and y.dtype == torch.float16
    assert sqnr_db(yr, y) > BF16_FLOOR_DB


@pytest.mark.parametrize(
    ("weight", "match"),
    [
        (
            lambda: rtn_tensor(torch.randn(20, 64), WeightFormat(IntType(4, True), PerGroup(32))),
            "out_features % 16",
        ),
        (
            lambda: rtn_tensor(torch.randn(16, 64), WeightFormat(IntType(4, True), PerGroup(16))),
            "group size",
        ),
        (
            lambda: rtn_tensor(torch.randn(16, 64), WeightFormat(IntType(4, True), PerAxis(0))),
            "per-group",
        ),
    ],
)
def test_int4pack_reasons(weight, match: str) -> None:
    reason = DEFAULT_REGISTRY.get("linear", W4).applies(weight(), SPEC)
    assert reason is not None and match in reason


def test_int8pack_reasons() -> None:
    entry = DEFAULT_REGISTRY.get("linear", W8)
    int4 = rtn_tensor(torch.randn(16, 64), WeightFormat(IntType(4, True), PerAxis(0)))
    assert "8-bit codes" in entry.applies(int4, SPEC)
    assert "in_features % 16" in entry.applies(int8_weight(16, 40), SPEC)
    asym = rtn_tensor(
        torch.randn(16, 64), WeightFormat(IntType(8, True), PerAxis(0), symmetric=False)
    )
    assert "symmetric" in entry.applies(asym, SPEC)
    grouped = rtn_tensor(torch.randn(16, 64), WeightFormat(IntType(8, True), PerGroup(32)))
    assert "per-output-channel" in entry.applies(grouped, SPEC)
    assert "weight_only" in entry.applies(int8_weight(16, 64), LayerSpec("linear", "dynamic"))
