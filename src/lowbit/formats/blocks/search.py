"""ggml's scale searches (make_qx_quants, make_qkx2_quants), vectorized over sub-blocks.

ggml accumulates its sums in float32, one element after another, without FMA (ggml-base is
built for baseline x86-64/arm with -O3 and no -ffast-math), so the result depends on that
order. Here every sum runs as a loop over the few elements of a sub-block (16 or 32), each
step a float32 tensor op over all sub-blocks and all candidate scales at once: the same
operations in the same order, hence the same bits. Candidate steps are evaluated together
and then chosen with ggml's sequential rule (the first strictly better one wins).
"""

from __future__ import annotations

import numpy as np
import torch

from .common import rdiv

GROUP_MAX_EPS = float(np.float32(1e-15))


def f32(v: float) -> float:
    """A Python float holding the float32 value of v (for ggml's float literals)."""
    return float(np.float32(v))


def seq_sum(t: torch.Tensor, start: torch.Tensor | None = None) -> torch.Tensor:
    """float32 sum over the last dim, left to right, as `for (i...) s += t[i]` from s = start
    (0 when None: 0 + t[0] is t[0] up to the sign of zero). The summed dim is moved first
    so that every step adds contiguous slices, in place into one buffer."""
    tt = t.movedim(-1, 0).contiguous()
    acc = tt[0].clone() if start is None else start + tt[0]
    for i in range(1, tt.shape[0]):
        acc.add_(tt[i])
    return acc


def nearest_int(v: torch.Tensor) -> torch.Tensor:
    """ggml's nearest_int (the 12582912.f trick): round half to even, as int32."""
    return torch.round(v).to(torch.int32)


def signed_absmax(x: torch.Tensor) -> torch.Tensor:
    """The value of largest |x| over the last dim, first one on ties (`if (ax > amax)`)."""
    return torch.gather(x, -1, x.abs().argmax(dim=-1, keepdim=True)).squeeze(-1)


def make_qx_quants(
    x: torch.Tensor, nmax: int, qw: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """make_qx_quants(n, nmax, x, L, rmse_type=1, qw) on x (N, n): (scale, codes 0..2nmax-1).

    Weights are qw when given, else x*x (rmse_type 1).
    """
    mx = signed_absmax(x)
    zero = mx.abs() < GROUP_MAX_EPS
    safe = torch.where(zero, torch.ones_like(mx), mx)
    w = x * x if qw is None else qw
    wx = w * x
    # candidate 0 is the plain -nmax/max, then is = -9..9 without 0.
    steps = [float(np.float32(-nmax))] + [
        -float(np.float32(np.float32(nmax) + np.float32(0.1) * np.float32(i)))
        for i in range(-9, 10)
        if i
    ]
    iscale = torch.stack([torch.full_like(safe, s) / safe for s in steps], dim=-1)  # (N, S)
    lq = nearest_int(iscale.unsqueeze(-1) * x.unsqueeze(-2)).clamp(-nmax, nmax - 1)  # (N, S, n)
    lf = lq.to(torch.float32)
    sumlx = seq_sum(wx.unsqueeze(-2) * lf)
    suml2 = seq_sum(w.unsqueeze(-2) * lf * lf)
    scale = torch.where(
        suml2[:, 0] != 0, sumlx[:, 0] / torch.where(suml2[:, 0] != 0, suml2[:, 0], 1.0), 0.0
    )
    best = scale * sumlx[:, 0]
    pick = torch.zeros_like(mx, dtype=torch.long)
    for s in range(1, len(steps)):
        better = (suml2[:, s] > 0) & (sumlx[:, s] * sumlx[:, s] > best * suml2[:, s])
        new_scale = sumlx[:, s] / torch.where(suml2[:, s] != 0, suml2[:, s], 1.0)
        scale = torch.where(better, new_scale, scale)
        best = torch.where(better, scale * sumlx[:, s], best)
        pick = torch.where(better, s, pick)
    lv = torch.gather(lq, 1, pick.view(-1, 1, 1).expand(-1, 1, x.shape[-1])).squeeze(1) + nmax
    lv = torch.where(zero.unsqueeze(-1), 0, lv)
    scale = torch.where(zero, 0.0, scale)
    return scale, lv


def make_qkx2_quants(
    x: torch.Tensor,
    w: torch.Tensor,
    nmax: int,
    rmin: float,
    rdelta: float,
    nstep: int,
    use_mad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """make_qkx2_quants(n, nmax, x, weights, L, &the_min, Laux, rmin, rdelta, nstep, use_mad)
    on x, w (N, n): (scale (N,), the_min (N,) = -min >= 0, lv (N, n) codes 0..nmax).

    The steps are sequential in ggml: a better step replaces `min`, and later steps round
    x - min with the new min, so the loop over the nstep + 1 steps stays a loop.
    """
    mn = x.amin(dim=-1).clamp(max=0.0)  # if (min > 0) min = 0
    mx = x.amax(dim=-1)
    sum_w = seq_sum(w)
    sum_x = seq_sum(w * x)
    flat = mx == mn
    one = torch.ones_like(mx)
    iscale0 = rdiv(f32(nmax), torch.where(flat, one, mx - mn))
    scale = rdiv(1.0, iscale0)
    lv = nearest_int(iscale0.unsqueeze(-1) * (x - mn.unsqueeze(-1))).clamp(0, nmax)
    d0 = scale.unsqueeze(-1) * lv.to(torch.float32) + mn.unsqueeze(-1) - x
    best = seq_sum(w * (d0.abs() if use_mad else d0 * d0))
    cur_min = mn
    for i in range(nstep + 1):
        step = f32(
            np.float32(np.float32(rmin) + np.float32(rdelta) * np.float32(i)) + np.float32(nmax)
        )
        iscale = rdiv(step, torch.where(flat, one, mx - cur_min))
        la = nearest_int(iscale.unsqueeze(-1) * (x - cur_min.unsqueeze(-1))).clamp(0, nmax)
        lf = la.to(torch.float32)
        wl = w * lf
        sum_l = seq_sum(wl)
        sum_l2 = seq_sum(wl * lf)
        sum_xl = seq_sum(wl * x)
        det = sum_w * sum_l2 - sum_l * sum_l
        ok_det = det > 0
        det_s = torch.where(ok_det, det, 1.0)
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / det_s
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det_s
        pos = this_min > 0
        this_min = torch.where(pos, 0.0, this_min)
        this_scale = torch.where(pos, sum_xl / torch.where(sum_l2 != 0, sum_l2, 1.0), this_scale)
        diff = this_scale.unsqueeze(-1) * lf + this_min.unsqueeze(-1) - x
        cur_err = seq_sum(w * (diff.abs() if use_mad else diff * diff))
        better = ok_det & (cur_err < best)
        best = torch.where(better, cur_err, best)
        scale = torch.where(better, this_scale, scale)
        cur_min = torch.where(better, this_min, cur_min)
        lv = torch.where(better.unsqueeze(-1), la, lv)
    lv = torch.where(flat.unsqueeze(-1), 0, lv)
    scale = torch.where(flat, 0.0, scale)
    return scale, -cur_min, lv


def make_q3_quants(x: torch.Tensor, nmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """make_q3_quants(n, nmax, x, L, do_rmse=true) on x (N, n): (scale (N,), codes 0..2nmax-1).

    After the first rounding ggml revisits the elements one at a time (5 passes), moving one
    code when that raises sumlx^2/suml2; the running sums make it sequential over elements,
    so this loops over passes and elements, each step vectorized over sub-blocks. A pass
    without change leaves the state as it is, so running all 5 equals ggml's early break.
    """
    mx = signed_absmax(x)
    zero = mx.abs() < GROUP_MAX_EPS
    iscale = rdiv(f32(-nmax), torch.where(zero, 1.0, mx))
    lv = nearest_int(iscale.unsqueeze(-1) * x).clamp(-nmax, nmax - 1)
    w = x * x
    wx = w * x
    lf = lv.to(torch.float32)
    sumlx = seq_sum(wx * lf)
    suml2 = seq_sum(w * lf * lf)
    lv = lv.clone()
    for _ in range(5):
        for i in range(x.shape[-1]):
            li = lv[:, i].to(torch.float32)
            wi, wxi, xi = w[:, i], wx[:, i], x[:, i]
            slx = sumlx - wxi * li
            sl2 = suml2 - wi * li * li
            pos = slx > 0
            new_l = nearest_int(xi * sl2 / torch.where(pos, slx, 1.0)).clamp(-nmax, nmax - 1)
            nl = new_l.to(torch.float32)
            slx = slx + wxi * nl
            sl2 = sl2 + wi * nl * nl
            take = pos & (new_l != lv[:, i]) & (sl2 > 0) & (slx * slx * suml2 > sumlx * sumlx * sl2)
            lv[:, i] = torch.where(take, new_l, lv[:, i])
            sumlx = torch.where(take, slx, sumlx)
            suml2 = torch.where(take, sl2, suml2)
    scale = torch.where(suml2 > 0, sumlx / torch.where(suml2 > 0, suml2, 1.0), 0.0)
    scale = torch.where(zero, 0.0, scale)
    lv = torch.where(zero.unsqueeze(-1), 0, lv + nmax)
    return scale, lv


def make_qp_quants(
    x: torch.Tensor, nmax: int, qw: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """make_qp_quants(n, nmax, x, L, quant_weights) on x, qw (N, n): the imatrix k-quants'
    quantization of the sub-block scales (or mins) to nmax levels: (scale (N,), L (N, n))."""
    mx = x.amax(-1)
    mx = torch.where(mx > 0, mx, 0.0)  # MAX(max, x[i]) from 0
    zero = mx < GROUP_MAX_EPS
    safe = torch.where(zero, 1.0, mx)
    iscale = rdiv(f32(nmax), safe)
    lv = nearest_int(iscale.unsqueeze(-1) * x)
    scale = rdiv(1.0, iscale)
    diff = x - scale.unsqueeze(-1) * lv.to(torch.float32)
    best = seq_sum(qw * diff * diff)
    for i in (-4, -3, -2, -1, 1, 2, 3, 4):
        isc = rdiv(f32(np.float32(0.1) * np.float32(i) + np.float32(nmax)), safe)
        sc = rdiv(1.0, isc)
        li = nearest_int(isc.unsqueeze(-1) * x).clamp(max=nmax)
        diff = x - sc.unsqueeze(-1) * li.to(torch.float32)
        mse = seq_sum(qw * diff * diff)
        better = mse < best
        best = torch.where(better, mse, best)
        iscale = torch.where(better, isc, iscale)
    lv = nearest_int(iscale.unsqueeze(-1) * x).clamp(max=nmax)
    wx = qw * x
    lf = lv.to(torch.float32)
    sumlx = seq_sum(wx * lf)
    suml2 = seq_sum(qw * lf * lf)
    lv = lv.clone()
    for _ in range(5):
        for i in range(x.shape[-1]):
            li = lv[:, i].to(torch.float32)
            wi, wxi, xi = qw[:, i], wx[:, i], x[:, i]
            slx = sumlx - wxi * li
            sl2 = suml2 - wi * li * li
            ok = (slx > 0) & (sl2 > 0)
            new_l = nearest_int(xi * sl2 / torch.where(ok, slx, 1.0)).clamp(max=nmax)
            nl = new_l.to(torch.float32)
            slx = slx + wxi * nl
            sl2 = sl2 + wi * nl * nl
            take = ok & (new_l != lv[:, i]) & (slx * slx * suml2 > sumlx * sumlx * sl2)
            lv[:, i] = torch.where(take, new_l, lv[:, i])
            sumlx = torch.where(take, slx, sumlx)
            suml2 = torch.where(take, sl2, suml2)
    scale = torch.where(suml2 > 0, sumlx / torch.where(suml2 > 0, suml2, 1.0), 0.0)
    return torch.where(zero, 0.0, scale), torch.where(zero.unsqueeze(-1), 0, lv)
