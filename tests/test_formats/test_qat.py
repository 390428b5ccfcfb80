"""Fake quantization for QAT: forward equals formats.affine.fake_quantize bit for bit; the
straight-through and LSQ gradients are checked by hand and against torch's LSQ kernels."""

from __future__ import annotations

import math

import pytest
import torch

from lowbit.errors import LowbitError
from lowbit.formats.affine import QParams, choose_qparams, fake_quantize
from lowbit.formats.granularity import PerAxis, PerTensor
from lowbit.formats.qat import fake_quantize_ste, lsq_fake_quantize, lsq_grad_scale
from lowbit.formats.qtypes import IntType

UINT8 = IntType(8, False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_ste_forward_equals_fake_quantize_per_tensor_zero_point(dtype: torch.dtype) -> None:
    x = (torch.randn(64, 33) * 2 + 0.5).to(dtype)
    # A clip range narrower than the data, so that clamping happens on both sides.
    qp = choose_qparams(x, UINT8, symmetric=False, form="zero_point", clip=(-1.0, 2.0))
    out = fake_quantize_ste(x, qp.scale, qp.zero_point, qp.qmin, qp.qmax)
    assert out.dtype == dtype
    assert torch.equal(out, fake_quantize(x, qp))


def test_ste_forward_equals_fake_quantize_per_channel_symmetric() -> None:
    w = torch.randn(7, 5, 3, 3) * torch.linspace(0.1, 4.0, 7).reshape(7, 1, 1, 1)
    for bits in (2, 4, 8):
        qp = choose_qparams(w, IntType(bits, True), PerAxis(0))
        out = fake_quantize_ste(w, qp.scale, None, qp.qmin, qp.qmax, axis=0)
        assert torch.equal(out, fake_quantize(w, qp))


def test_ste_gradient_is_one_inside_clip_range_and_zero_outside() -> None:
    # s = 0.25, z = 2, codes 0..10: the representable range is [-0.5, 2.0]. Codes by hand:
    # -1.0 -> -2 (out), -0.5 -> 0, 0.3 -> 3, 2.0 -> 10, 2.1 -> round(8.4)+2 = 10 (in: rounds
    # onto the last code), 2.2 -> round(8.8)+2 = 11 (out), 5.0 -> 22 (out).
    x = torch.tensor([-1.0, -0.5, 0.3, 2.0, 2.1, 2.2, 5.0], requires_grad=True)
    scale = torch.tensor(0.25, requires_grad=True)
    out = fake_quantize_ste(x, scale, 2, 0, 10)
    assert torch.equal(out.detach(), torch.tensor([-0.5, -0.5, 0.25, 2.0, 2.0, 2.0, 2.0]))
    out.backward(torch.arange(1.0, 8.0))
    assert torch.equal(x.grad, torch.tensor([0.0, 2.0, 3.0, 4.0, 5.0, 0.0, 0.0]))
    assert scale.grad is None  # observer-given parameters are not trained


def test_ste_per_channel_mask_uses_each_channels_range() -> None:
    # Channel 0: s = 1 (codes -3..3 cover [-3, 3]); channel 1: s = 0.1 (covers [-0.3, 0.3]).
    x = torch.tensor([[0.5, 2.0, 5.0], [0.05, 0.2, 0.5]]).T.contiguous().requires_grad_()
    out = fake_quantize_ste(x, torch.tensor([1.0, 0.1]), None, -3, 3, axis=1)
    out.sum().backward()
    assert torch.equal(x.grad.T, torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]]))


def test_lsq_forward_equals_fake_quantize_with_rounded_zero_point() -> None:
    x = torch.randn(10, 20) * 3
    scale = torch.tensor(0.03, requires_grad=True)
    zp = torch.tensor(100.4, requires_grad=True)  # rounds to 100
    out = lsq_fake_quantize(x, scale, zp, 0, 255)
    qp = QParams(scale.detach(), UINT8, PerTensor(), 0, 255, zero_point=torch.tensor(100))
    assert torch.equal(out.detach(), fake_quantize(x, qp))


def test_lsq_scale_gradient_by_hand() -> None:
    # Symmetric, codes -4..3, s = 0.5, v = x / s = [0.6, -1.4, 5.2, -9.0]:
    # inside: round(v) - v = 0.4 and 0.4; above: qmax = 3; below: qmin = -4.
    x = torch.tensor([0.3, -0.7, 2.6, -4.5], requires_grad=True)
    scale = torch.tensor(0.5, requires_grad=True)
    lsq_fake_quantize(x, scale, None, -4, 3, grad_scale=1.0).backward(
        torch.tensor([1.0, 2.0, 1.0, 0.5])
    )
    assert scale.grad.item() == pytest.approx(0.4 + 2 * 0.4 + 3 - 0.5 * 4, abs=1e-6)
    assert torch.equal(x.grad, torch.tensor([1.0, 2.0, 0.0, 0.0]))
    # The default gradient scale is LSQ's g = 1/sqrt(numel * qmax) = 1/sqrt(4 * 3).
    scale2 = torch.tensor(0.5, requires_grad=True)
    lsq_fake_quantize(x.detach(), scale2, None, -4, 3).sum().backward()
    assert scale2.grad.item() == pytest.approx((0.4 + 0.4 + 3 - 4) / math.sqrt(12), abs=1e-6)


def test_lsq_gradients_equal_finite_differences_where_clamped() -> None:
    # Where every value saturates, x' = s·(qc - z) is smooth in s and z: the LSQ gradient is
    # the true derivative, so central finite differences must agree (g = 1). x' is linear in
    # s there, so a wide step (kept inside saturation) is exact up to float32 rounding.
    x = torch.tensor([-50.0, 60.0, 70.0, -80.0])
    w = torch.tensor([0.3, -1.0, 2.0, 0.7])
    s0, z0, h = 0.1, 7.0, 0.01

    def loss(s: float, z: float) -> float:
        st, zt = torch.tensor(s), torch.tensor(z)
        return float((lsq_fake_quantize(x, st, zt, 0, 15, grad_scale=1.0) * w).sum())

    scale = torch.tensor(s0, requires_grad=True)
    zp = torch.tensor(z0, requires_grad=True)
    (lsq_fake_quantize(x, scale, zp, 0, 15, grad_scale=1.0) * w).sum().backward()
    fd_s = (loss(s0 + h, z0) - loss(s0 - h, z0)) / (2 * h)
    fd_z = (loss(s0, z0 + 0.3) - loss(s0, z0 - 0.3)) / 0.6  # z is rounded: step within a code
    assert scale.grad.item() == pytest.approx(fd_s, rel=1e-4)
    assert zp.grad.item() == pytest.approx(-s0 * float(w.sum()), rel=1e-6)
    assert fd_z == 0.0  # the rounded zero point does not move for |dz| < 0.5 ...
    # ... and the gradient equals the slope over whole codes:
    fd_z1 = (loss(s0, z0 + 1) - loss(s0, z0 - 1)) / 2
    assert zp.grad.item() == pytest.approx(fd_z1, rel=1e-4)


def test_lsq_matches_torch_learnable_fake_quantize_per_tensor() -> None:
    x = torch.randn(2000) * 3
    w = torch.randn(2000)
    grads = []
    for fn in (torch._fake_quantize_learnable_per_tensor_affine, None):
        xi = x.clone().requires_grad_()
        s = torch.tensor([0.02], requires_grad=True)
        z = torch.tensor([130.3], requires_grad=True)
        if fn is None:
            out = lsq_fake_quantize(xi, s, z, 0, 255, grad_scale=0.37)
        else:
            out = fn(xi, s, z, 0, 255, 0.37)
        (out * w).sum().backward()
        grads.append((out.detach(), xi.grad, s.grad, z.grad))
    for ref, ours in zip(*grads, strict=True):
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


def test_lsq_matches_torch_learnable_fake_quantize_per_channel() -> None:
    x = torch.randn(6, 4, 5)
    scale = torch.tensor([0.01, 0.05, 0.1, 0.2])
    zp = torch.tensor([1.2, 5.0, -3.0, 30.0])  # -3 and 30 are clamped to the code range
    results = []
    for ours in (False, True):
        s, z = scale.clone().requires_grad_(), zp.clone().requires_grad_()
        if ours:
            out = lsq_fake_quantize(x, s, z, 0, 15, axis=1, grad_scale=0.5)
        else:
            out = torch._fake_quantize_learnable_per_channel_affine(x, s, z, 1, 0, 15, 0.5)
        out.sum().backward()
        results.append((out.detach(), s.grad, z.grad))
    for ref, got in zip(*results, strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def test_lsq_grad_scale_counts_elements_per_scale() -> None:
    x = torch.zeros(8, 3, 5)
    assert lsq_grad_scale(x, 127) == pytest.approx(1 / math.sqrt(120 * 127))
    assert lsq_grad_scale(x, 127, axis=1) == pytest.approx(1 / math.sqrt(40 * 127))


def test_bad_arguments_raise_lowbit_errors() -> None:
    x = torch.randn(4, 3)
    s = torch.tensor(0.1)
    with pytest.raises(LowbitError, match="qmin < qmax"):
        fake_quantize_ste(x, s, None, 5, 5)
    with pytest.raises(LowbitError, match="qmin < qmax"):
        lsq_fake_quantize(x, s, None, 0.0, 255)  # type: ignore[arg-type]
    with pytest.raises(LowbitError, match="per-tensor scale"):
        fake_quantize_ste(x, torch.ones(3), None, -127, 127)
    with pytest.raises(LowbitError, match=r"shape \(3,\)"):
        fake_quantize_ste(x, torch.ones(4), None, -127, 127, axis=1)
    with pytest.raises(LowbitError, match="out of range"):
        fake_quantize_ste(x, torch.ones(3), None, -127, 127, axis=2)
    with pytest.raises(LowbitError, match="tensor"):
        lsq_fake_quantize(x, 0.1, None, -127, 127)  # type: ignore[arg-type]
