"""Quantization-aware training: fake quantization that gradients can pass through.

Both functions compute in the forward pass exactly what
``lowbit.formats.affine.fake_quantize`` computes for the same parameters (integer zero-point
form, or symmetric when ``zero_point`` is None), bit for bit:

    q = clamp(round(x / s) + z, qmin, qmax),    x' = s·(q - z)

with round-half-to-even. They differ only in their gradients:

* ``fake_quantize_ste``: the straight-through estimator (Bengio et al. 2013, as used by
  torch.ao's FakeQuantize): dx'/dx = 1 where ``round(x / s) + z`` lies in [qmin, qmax], else
  0; scale and zero point get no gradient (they come from an observer).
* ``lsq_fake_quantize``: learned step size quantization (LSQ, Esser et al. 2019, "Learned
  Step Size Quantization", arXiv:1902.08153) with the learnable zero point of LSQ+
  (Bhalgat et al. 2020). With v = x / s:

      dx'/dx = 1 inside, 0 outside (straight through, as above)
      dx'/ds = (round(v) - v) inside,  (qmin - z) below,  (qmax - z) above     (times g)
      dx'/dz = 0 inside,  -s outside                                            (times g)

  where g = 1 / sqrt(n · qmax) is LSQ's gradient scale, n the number of elements that share
  one scale (the whole tensor per tensor, one slice per channel). The zero point is rounded
  and clamped to [qmin, qmax] in the forward pass (straight through for its gradient), as in
  torch's ``_fake_quantize_learnable_per_tensor_affine``.

It sits in formats (L0), beside the ``fake_quantize`` it equals in the forward pass, so the
QAT modules of lowbit.nn (L4b) call it without importing an algorithm (docs/architecture.md).

Pure functions: no modules, no state. Per-channel parameters have shape ``(C,)`` and belong
to dimension ``axis`` of ``x``; per-tensor parameters are scalars (shape ``()`` or ``(1,)``).
"""

from __future__ import annotations

import math

import torch

from lowbit.errors import InvalidInputError, InvalidSpecError

__all__ = ["fake_quantize_ste", "lsq_fake_quantize", "lsq_grad_scale"]


def _check_range(qmin: int, qmax: int) -> None:
    if not isinstance(qmin, int) or not isinstance(qmax, int) or qmin >= qmax:
        raise InvalidSpecError(
            f"need integer qmin < qmax, got qmin={qmin!r}, qmax={qmax!r}; take them from the "
            "QParams or the IntType (e.g. IntType(8, False).qmin/.qmax)"
        )


def _as_param(
    p: torch.Tensor | float | int, x: torch.Tensor, axis: int | None, what: str
) -> torch.Tensor:
    """float32 ``p`` reshaped to broadcast against ``x`` (per tensor or along ``axis``)."""
    t = torch.as_tensor(p, device=x.device)
    t = t.to(torch.float32)
    if axis is None:
        if t.numel() != 1:
            raise InvalidInputError(
                f"per-tensor {what} must hold one value, got shape {tuple(t.shape)}; "
                "pass axis=<channel dim> for per-channel parameters"
            )
        return t.reshape(())
    if not -x.dim() <= axis < x.dim():
        raise InvalidInputError(
            f"axis {axis} is out of range for an input of shape {tuple(x.shape)}"
        )
    channels = x.shape[axis]
    if t.dim() > 1 or t.numel() not in (1, channels):
        raise InvalidInputError(
            f"per-channel {what} must have shape ({channels},) for axis {axis} of an input of "
            f"shape {tuple(x.shape)}, got {tuple(t.shape)}"
        )
    view = [1] * x.dim()
    view[axis] = -1
    return t.reshape(view)


def _compute_dtype(x: torch.Tensor) -> torch.Tensor:
    """``x`` in the dtype formats.affine computes in: float64 stays, the rest is float32."""
    return x if x.dtype == torch.float64 else x.to(torch.float32)


def _codes(
    x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor | None, qmin: int, qmax: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(unclamped codes round(x/s) + z, clamped codes); float32, the arithmetic of
    formats.affine.quantize."""
    q = torch.round(x / scale)
    if zp is not None:
        q = q + zp
    return q, q.clamp(qmin, qmax)


def _dequant(q: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor | None) -> torch.Tensor:
    """The arithmetic of formats.affine.dequantize: s·(q - z) or s·q, in the scale's dtype."""
    q = q.to(scale.dtype)
    return (q - zp) * scale if zp is not None else q * scale


def _rounded_zero_point(
    zero_point: torch.Tensor | float | int | None,
    x: torch.Tensor,
    axis: int | None,
    qmin: int,
    qmax: int,
) -> torch.Tensor | None:
    if zero_point is None:
        return None
    return torch.round(_as_param(zero_point, x, axis, "zero_point")).clamp(qmin, qmax)


class _FakeQuantSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale, zp, qmin, qmax):  # type: ignore[override]
        xf = _compute_dtype(x)
        q, qc = _codes(xf, scale, zp, qmin, qmax)
        ctx.save_for_backward((q >= qmin) & (q <= qmax))
        return _dequant(qc, scale, zp).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (inside,) = ctx.saved_tensors
        return grad * inside.to(grad.dtype), None, None, None, None


def fake_quantize_ste(
    x: torch.Tensor,
    scale: torch.Tensor | float,
    zero_point: torch.Tensor | int | None,
    qmin: int,
    qmax: int,
    *,
    axis: int | None = None,
) -> torch.Tensor:
    """Fake-quantize ``x`` with the straight-through estimator.

    Args:
        x: float tensor (any shape; computed in float32, float64 in float64, as
            ``formats.affine``; returned in ``x.dtype``).
        scale: step size s > 0: a scalar, or shape ``(x.shape[axis],)`` with ``axis``.
        zero_point: integer zero point z (same shape as scale), or None for symmetric.
        qmin, qmax: the code range (e.g. 0, 255 for uint8; -127, 127 for restricted int8).
        axis: the channel dimension of per-channel parameters; None for per tensor.

    Returns:
        ``s·(clamp(round(x/s) + z, qmin, qmax) - z)``, equal to ``formats.affine.fake_quantize``
        with the same parameters. The gradient w.r.t. ``x`` is 1 where the unclamped code lies
        in [qmin, qmax] and 0 elsewhere; ``scale`` and ``zero_point`` get none.
    """
    _check_range(qmin, qmax)
    s = _as_param(scale, x, axis, "scale").detach()
    zp = _rounded_zero_point(zero_point, x, axis, qmin, qmax)
    return _FakeQuantSTE.apply(x, s, None if zp is None else zp.detach(), qmin, qmax)


def lsq_grad_scale(x: torch.Tensor, qmax: int, axis: int | None = None) -> float:
    """LSQ's gradient scale g = 1 / sqrt(n · qmax), n = elements that share one scale."""
    n = x.numel() if axis is None else x.numel() // max(x.shape[axis], 1)
    return 1.0 / math.sqrt(max(n, 1) * max(qmax, 1))


class _LSQ(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin, qmax, g):  # type: ignore[override]
        xf = _compute_dtype(x)
        zp = None if zero_point is None else torch.round(zero_point).clamp(qmin, qmax)
        q, qc = _codes(xf, scale, zp, qmin, qmax)
        ctx.save_for_backward(xf, scale, q, qc, zp)
        ctx.qrange = (qmin, qmax, g)
        return _dequant(qc, scale, zp).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        xf, scale, q, qc, zp = ctx.saved_tensors
        qmin, qmax, g = ctx.qrange
        inside = (q >= qmin) & (q <= qmax)
        grad32 = grad.to(xf.dtype)
        grad_x = (grad32 * inside).to(grad.dtype)
        v = xf / scale
        # Inside: d(s·round(v))/ds = round(v) - v (straight through the rounding);
        # outside: d(s·(qc - z))/ds = qc - z with qc the clamped code qmin or qmax.
        d_scale = torch.where(inside, torch.round(v) - v, qc if zp is None else qc - zp)
        grad_scale = (grad32 * d_scale * g).sum_to_size(scale.shape).to(scale.dtype)
        grad_zp = None
        if zp is not None:
            # Inside the z terms cancel; outside x' = s·(qc - z) so dx'/dz = -s.
            d_zp = torch.where(inside, torch.zeros_like(xf), -scale.expand_as(xf))
            grad_zp = (grad32 * d_zp * g).sum_to_size(zp.shape).to(zp.dtype)
        return grad_x, grad_scale, grad_zp, None, None, None


def lsq_fake_quantize(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor | None,
    qmin: int,
    qmax: int,
    *,
    axis: int | None = None,
    grad_scale: float | None = None,
) -> torch.Tensor:
    """Fake-quantize ``x`` with a learnable step size (LSQ) and optional learnable zero point.

    Args:
        x: float tensor (computed as in ``fake_quantize_ste``, returned in ``x.dtype``).
        scale: step size s > 0 (keep it positive, e.g. ``scale.clamp_min(eps)``): a scalar,
            or shape ``(x.shape[axis],)`` with ``axis``. Gets LSQ's gradient.
        zero_point: float zero point (rounded and clamped in the forward pass; gets LSQ+'s
            gradient), or None for symmetric quantization.
        qmin, qmax: the code range.
        axis: the channel dimension of per-channel parameters; None for per tensor.
        grad_scale: g multiplying the gradients of scale and zero point; default
            ``lsq_grad_scale(x, qmax, axis)`` = 1/sqrt(n·qmax).

    Returns:
        The same values as ``fake_quantize_ste`` (and ``formats.affine.fake_quantize``) with
        the rounded zero point; gradients as in the module docstring.
    """
    _check_range(qmin, qmax)
    if not torch.is_tensor(scale):
        raise InvalidInputError("lsq_fake_quantize needs scale as a tensor (a learnable one)")
    g = lsq_grad_scale(x, qmax, axis) if grad_scale is None else float(grad_scale)
    s = _as_param(scale, x, axis, "scale")
    zp = None if zero_point is None else _as_param(zero_point, x, axis, "zero_point")
    return _LSQ.apply(x, s, zp, qmin, qmax, g)
