"""Affine integer quantization: the worked examples and the properties every mode keeps."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.errors import InvalidInputError, InvalidSpecError
from lowbit.formats.affine import (
    QParams,
    choose_qparams,
    dequantize,
    fake_quantize,
    quantize,
    round_half,
)
from lowbit.formats.granularity import PerAxis, PerGroup, PerTensor, broadcast_to
from lowbit.formats.qtypes import IntType
from lowbit_testkit.golden import load_golden

GOLDEN = load_golden("affine_worked_examples.json")["cases"]


@pytest.mark.parametrize("case", GOLDEN, ids=lambda c: c["name"])
def test_worked_examples(case: dict) -> None:
    x = torch.tensor(case["values"])
    if case["symmetric"]:
        qp = choose_qparams(x, IntType(case["bits"], True), clip=case["clip_range"])
    else:
        qp = choose_qparams(
            x,
            IntType(case["bits"], False),
            symmetric=False,
            clip=(case["clip_min"], case["clip_max"]),
        )
        assert float(qp.offset) == pytest.approx(case["offset"])
    q = quantize(x, qp)
    assert float(qp.scale) == pytest.approx(case["scale"], abs=1e-6)
    assert q.tolist() == case["q"]
    assert dequantize(q, qp).tolist() == pytest.approx(case["dequantized"], abs=1e-6)


def test_zero_point_form_matches_its_formula() -> None:
    x = torch.tensor([1.1, 2.4, -0.3, 0.8])
    qp = choose_qparams(x, IntType(8, False), symmetric=False, form="zero_point")
    s = (2.4 - (-0.3)) / 255
    z = round(0.3 / s)
    assert float(qp.scale) == pytest.approx(s)
    assert int(qp.zero_point) == z
    q = quantize(x, qp)
    assert q.tolist() == [round(v / s) + z for v in x.tolist()]
    assert torch.equal(dequantize(q, qp), (q.float() - z) * qp.scale)


def test_zero_point_form_keeps_zero_exact_on_positive_data() -> None:
    x = torch.tensor([0.5, 1.0, 3.0, 0.0])
    qp = choose_qparams(x, IntType(4, False), symmetric=False, form="zero_point")
    assert fake_quantize(x, qp)[3] == 0.0


def test_full_range_symmetric_uses_all_codes() -> None:
    x = torch.tensor([-1.0, 1.0, 0.3])
    qp = choose_qparams(x, IntType(8, True), restricted=False)
    assert float(qp.scale) == pytest.approx(2 / 255)
    assert (qp.qmin, qp.qmax) == (-128, 127)
    assert quantize(-128 * qp.scale.reshape(1), qp).tolist() == [-128]


def test_rounding_modes_differ_only_on_ties() -> None:
    v = torch.tensor([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 0.4, -0.6])
    assert round_half(v, "half_even").tolist() == [-2, -2, -0, 0, 2, 2, 0, -1]
    assert round_half(v, "half_away").tolist() == [-3, -2, -1, 1, 2, 3, 0, -1]
    assert round_half(v, "half_up").tolist() == [-2, -1, 0, 1, 2, 3, 0, -1]
    with pytest.raises(InvalidSpecError, match="rounding"):
        round_half(v, "stochastic")  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_input_is_rejected_with_a_clear_error(bad: float) -> None:
    x = torch.tensor([[0.1, 0.2], [bad, 0.3]])
    with pytest.raises(InvalidInputError, match=r"NaN|Inf") as err:
        choose_qparams(x, IntType(8, True))
    assert "(1, 0)" in str(err.value)
    qp = choose_qparams(torch.ones(2, 2), IntType(8, True))
    with pytest.raises(InvalidInputError, match="finite"):
        quantize(x, qp)


def test_bad_specs_are_rejected() -> None:
    x = torch.randn(4)
    with pytest.raises(InvalidSpecError, match="signed"):
        choose_qparams(x, IntType(4, False), symmetric=True)
    with pytest.raises(InvalidSpecError, match=">= 2 bits"):
        choose_qparams(x, IntType(1, True))
    with pytest.raises(InvalidSpecError, match="min > max"):
        choose_qparams(x, IntType(4, False), symmetric=False, clip=(1.0, -1.0))
    with pytest.raises(InvalidSpecError, match="form"):
        choose_qparams(x, IntType(4, False), symmetric=False, form="weird")  # type: ignore[arg-type]


# ---------------------------------------------------------------- property tests

MODES = [
    dict(symmetric=True, restricted=True, signed=True),
    dict(symmetric=True, restricted=False, signed=True),
    dict(symmetric=False, form="offset", signed=False),
    dict(symmetric=False, form="zero_point", signed=False),
    dict(symmetric=False, form="offset", signed=True),
    dict(symmetric=False, form="zero_point", signed=True),
]


def _granularities(shape: tuple[int, ...]) -> list:
    out = [PerTensor(), PerAxis(0), PerAxis(-1)]
    for size in (1, 3, 8, shape[-1] + 2):
        out.append(PerGroup(size))
    out.append(PerGroup(2, axis=0))
    return out


def _spec(mode: dict, bits: int) -> tuple[IntType, dict]:
    mode = dict(mode)
    signed = mode.pop("signed")
    if mode.get("restricted", False) and bits < 2:
        bits = 2
    return IntType(bits, signed), mode


shapes = st.tuples(st.integers(1, 6), st.integers(1, 40))


@settings(max_examples=150, deadline=None)
@given(
    shape=shapes,
    bits=st.integers(1, 8),
    mode=st.sampled_from(MODES),
    gran_index=st.integers(0, 7),
    seed=st.integers(0, 2**31 - 1),
    magnitude=st.sampled_from([1e-3, 1.0, 1e3]),
)
def test_error_is_at_most_half_a_step_inside_the_clip_range(
    shape, bits, mode, gran_index, seed, magnitude
) -> None:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * magnitude
    granularity = _granularities(shape)[gran_index]
    qtype, kwargs = _spec(mode, bits)
    qp = choose_qparams(x, qtype, granularity, **kwargs)
    q = quantize(x, qp)
    assert q.dtype == qtype.storage
    assert int(q.min()) >= qp.qmin and int(q.max()) <= qp.qmax
    err = (dequantize(q, qp) - x).abs()
    half_step = broadcast_to(qp.scale, tuple(x.shape), granularity) / 2
    # float32 arithmetic adds a few ulps to the exact bound s/2
    assert bool((err <= half_step * (1 + 1e-5) + 1e-6 * x.abs()).all())


@settings(max_examples=100, deadline=None)
@given(
    shape=shapes,
    bits=st.integers(2, 8),
    mode=st.sampled_from(MODES),
    gran_index=st.integers(0, 7),
    seed=st.integers(0, 2**31 - 1),
)
def test_on_grid_values_round_trip_exactly(shape, bits, mode, gran_index, seed) -> None:
    gen = torch.Generator().manual_seed(seed)
    granularity = _granularities(shape)[gran_index]
    qtype, kwargs = _spec(mode, bits)
    qp = choose_qparams(torch.randn(shape, generator=gen), qtype, granularity, **kwargs)
    codes = torch.randint(qp.qmin, qp.qmax + 1, shape, generator=gen).to(qtype.storage)
    on_grid = dequantize(codes, qp)
    assert torch.equal(quantize(on_grid, qp), codes)
    assert torch.equal(fake_quantize(on_grid, qp), on_grid)


@settings(max_examples=60, deadline=None)
@given(
    shape=shapes,
    bits=st.integers(1, 8),
    mode=st.sampled_from(MODES),
    gran_index=st.integers(0, 7),
    value=st.sampled_from([0.0, 0.1, -3.7, 1e-6, 250.0]),
)
def test_constant_tensors_get_finite_scales_and_reconstruct(
    shape, bits, mode, gran_index, value
) -> None:
    x = torch.full(shape, value)
    granularity = _granularities(shape)[gran_index]
    qtype, kwargs = _spec(mode, bits)
    qp = choose_qparams(x, qtype, granularity, **kwargs)
    assert bool(torch.isfinite(qp.scale).all()) and bool((qp.scale > 0).all())
    xq = fake_quantize(x, qp)
    if value == 0.0 or kwargs.get("form") == "offset":
        assert torch.equal(xq, x)  # zero, and the offset form, reconstruct bit-exactly
    elif kwargs.get("restricted") is False:
        # full range: c/s = 2^(b-1) - 1/2 lies on a tie, so c is off the grid by s/2
        # (plus float32 rounding of s·q, which is relative to |c|, up to 2^b ulps of s/2)
        half_step = broadcast_to(qp.scale, shape, granularity) / 2
        assert bool(((xq - x).abs() <= half_step * (1 + 1e-5) + 2**-20 * x.abs()).all())
    else:
        # s·q with s = |c|/qmax: exact up to the rounding of one float32 multiply-divide
        assert torch.allclose(xq, x, rtol=2**-22, atol=0)


def test_given_clip_tensors_per_channel() -> None:
    w = torch.randn(3, 10)
    L = torch.tensor([0.5, 1.0, 2.0])
    qp = choose_qparams(w, IntType(8, True), PerAxis(0), clip=L)
    assert torch.allclose(qp.scale, L / 127)
    xq = fake_quantize(w, qp)
    assert bool((xq.abs() <= L[:, None] + 1e-6).all())


def test_qparams_shapes_follow_granularity() -> None:
    w = torch.randn(8, 70)
    assert choose_qparams(w, IntType(4, True), PerGroup(32)).scale.shape == (8, 3)
    assert choose_qparams(w, IntType(4, True), PerAxis(1)).scale.shape == (70,)
    qp = choose_qparams(w, IntType(4, False), PerGroup(32), symmetric=False, form="zero_point")
    assert isinstance(qp, QParams) and qp.zero_point.dtype == torch.int32
    assert qp.zero_point.shape == (8, 3) and not qp.symmetric
