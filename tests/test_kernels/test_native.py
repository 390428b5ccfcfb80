"""The C loops of the per-token int8 linear equal formats/affine.py (and the epilogue's
torch formula) bit for bit."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.errors import InvalidInputError
from lowbit.formats.affine import quantize
from lowbit.kernels import native
from lowbit.kernels.reference import token_qparams


def affine_quantize_rows(rows: torch.Tensor, zero_point: bool = False):
    """Codes, (m, 1) scales and zero points of formats/affine.py, with real divisions."""
    qp = token_qparams(rows, zero_point)
    zp = None if qp.zero_point is None else qp.zero_point.to(torch.int32).unsqueeze(1)
    return quantize(rows, qp), qp.scale.unsqueeze(1), zp


def assert_same(rows: torch.Tensor, zero_point: bool) -> None:
    q, s, zp = native.quantize_rows_int8(rows, zero_point)
    q_ref, s_ref, zp_ref = affine_quantize_rows(rows, zero_point)
    assert torch.equal(s, s_ref)
    assert torch.equal(q, q_ref)
    assert (zp is None and zp_ref is None) or torch.equal(zp, zp_ref)


def test_the_extension_is_built() -> None:
    # `pip install -e .` compiles it wherever a C compiler is present (CI has gcc); without
    # it the per-token linear still works, on slower torch ops.
    assert native.available(), "kernels/_rowquant.c was not built: pip install -e . with gcc"


@pytest.mark.parametrize("zero_point", [False, True])
@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (64, 384), (17, 1536)])
def test_quantize_rows_equals_the_torch_division(shape: tuple[int, int], zero_point: bool) -> None:
    torch.manual_seed(0)
    rows = torch.randn(shape) * torch.logspace(-3, 3, shape[0]).unsqueeze(1)
    rows += torch.randn(shape[0], 1) * rows.abs().amax(dim=1, keepdim=True)  # off-centre
    assert_same(rows, zero_point)


def test_one_sided_and_negative_rows() -> None:
    torch.manual_seed(2)
    rows = torch.cat([torch.randn(6, 50), torch.rand(3, 50) * 7, -torch.rand(2, 50)])
    assert_same(rows, zero_point=True)
    q, _, zp = native.quantize_rows_int8(torch.rand(1, 300), zero_point=True)
    assert q.min().item() == -128 and q.max().item() == 127  # one-sided: all 256 codes
    assert zp.item() == -128  # the row's minimum, 0 here, sits on the lowest code


def test_exact_ties_round_half_to_even_and_near_ties_like_division() -> None:
    # amax 127 gives s = 1: x = k + 0.5 are exact ties; their float neighbours are not.
    ties = torch.arange(-126, 126, dtype=torch.float32) + 0.5
    near = torch.cat([torch.nextafter(ties, ties + 1), torch.nextafter(ties, ties - 1)])
    for values in (ties, near):
        rows = torch.cat([values, torch.tensor([127.0])]).unsqueeze(0)
        assert_same(rows, zero_point=False)
        # asymmetric: min -128 and max 127 give s = 1 and zp = 0: the same ties
        assert_same(torch.cat([rows, torch.tensor([[-128.0]])], dim=1), zero_point=True)
    q, _, _ = native.quantize_rows_int8(torch.tensor([[0.5, 1.5, 2.5, -0.5, -1.5, 127.0]]))
    assert q.tolist() == [[0, 2, 2, 0, -2, 127]]


def test_zero_and_subnormal_rows() -> None:
    tiny = torch.finfo(torch.float32).tiny
    rows = torch.tensor([[0.0, 0.0, 0.0], [tiny / 8, -tiny / 16, 0.0], [1e-38, 5e-39, 0.0]])
    assert_same(rows, zero_point=False)
    assert_same(rows, zero_point=True)
    q, s, _ = native.quantize_rows_int8(rows)
    assert s[0].item() == 1.0 and q[0].tolist() == [0, 0, 0]


@settings(max_examples=150, deadline=None)
@given(
    values=st.lists(st.floats(-1e6, 1e6, allow_nan=False, width=32), min_size=1, max_size=80),
    scale_to=st.sampled_from([127.0, 63.5, 1.0, 1e-3]),
)
def test_quantize_rows_property(values: list[float], scale_to: float) -> None:
    row = torch.tensor(values, dtype=torch.float32)
    rows = torch.stack([row, row * scale_to, row.flip(0)])
    assert_same(rows, zero_point=False)
    assert_same(rows, zero_point=True)


def test_strided_rows_are_read_in_place() -> None:
    base = torch.randn(8, 40)
    view = base[:, 3:35]  # rows contiguous, row stride 40
    for zero_point in (False, True):
        q, s, zp = native.quantize_rows_int8(view, zero_point)
        q_ref, s_ref, zp_ref = affine_quantize_rows(view.contiguous(), zero_point)
        assert torch.equal(q, q_ref) and torch.equal(s, s_ref)
        assert zp is None or torch.equal(zp, zp_ref)


@pytest.mark.parametrize("zero_point", [False, True])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_rows_raise(bad: float, zero_point: bool) -> None:
    rows = torch.randn(4, 16)
    rows[2, 5] = bad
    with pytest.raises(InvalidInputError, match="NaN or Inf in 1 of its 4 rows"):
        native.quantize_rows_int8(rows, zero_point)


def test_wrong_layouts_raise() -> None:
    with pytest.raises(InvalidInputError, match="float32"):
        native.quantize_rows_int8(torch.randn(4, 8, dtype=torch.float64))
    with pytest.raises(InvalidInputError, match="rows contiguous"):
        native.quantize_rows_int8(torch.randn(8, 4).t())
    with pytest.raises(InvalidInputError, match="contiguous int32"):
        native.dequantize_int32_(torch.ones(2, 3), torch.ones(2, 1), torch.ones(3), None, False)
    with pytest.raises(InvalidInputError, match="scales and bias"):
        acc = torch.ones(2, 3, dtype=torch.int32)
        native.dequantize_int32_(acc, torch.ones(2, 1), torch.ones(4), None, False)
    with pytest.raises(InvalidInputError, match="together"):
        acc = torch.ones(2, 3, dtype=torch.int32)
        zp = torch.ones(2, 1, dtype=torch.int32)
        native.dequantize_int32_(acc, torch.ones(2, 1), torch.ones(3), None, False, zero_point=zp)


@pytest.mark.parametrize("zero_point", [False, True])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("relu", [False, True])
def test_dequantize_equals_the_torch_formula(bias: bool, relu: bool, zero_point: bool) -> None:
    torch.manual_seed(1)
    acc = torch.randint(-(2**20), 2**20, (33, 65), dtype=torch.int32)
    row_scale, col_scale = torch.rand(33, 1) / 100, torch.rand(65) / 100
    b = torch.randn(65) if bias else None
    zp = torch.randint(-128, 128, (33, 1), dtype=torch.int32) if zero_point else None
    col_sum = torch.randint(-(2**16), 2**16, (65,), dtype=torch.int32) if zero_point else None
    exact = acc if zp is None else acc - zp * col_sum
    expected = exact.float() * row_scale * col_scale
    if b is not None:
        expected = expected + b
    if relu:
        expected = torch.relu(expected)
    out = native.dequantize_int32_(
        acc.clone(), row_scale, col_scale, b, relu, zero_point=zp, col_sum=col_sum
    )
    assert out.dtype == torch.float32
    assert torch.equal(out, expected)
