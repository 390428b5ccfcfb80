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


def seq_sum0(t: torch.Tensor) -> torch.Tensor:
    """float32 sum over dim 0, left to right (`for (i...) s += t[i]`, from t[0]).

    index_add_ along dim 0 runs exactly that: one in-place add of each slice after the
    other, in index order, in float32 (ATen's index_add_cpu_ reuses one add_ iterator), so
    the whole sum is one call instead of a Python loop of n - 1 adds.
    """
    acc = t[:1].clone()
    if t.shape[0] > 1:
        acc.index_add_(0, torch.zeros(t.shape[0] - 1, dtype=torch.long), t[1:])
    return acc[0]


def seq_sum(t: torch.Tensor) -> torch.Tensor:
    """float32 sum over the last dim, left to right, as `for (i...) s += t[i]` from 0 (0 + t[0]
    is t[0] up to the sign of zero): seq_sum0 on t with that dim moved first."""
    return seq_sum0(t.movedim(-1, 0).contiguous())


def nearest_int(v: torch.Tensor) -> torch.Tensor:
    """ggml's nearest_int (the 12582912.f trick): round half to even, as int32."""
    return torch.round(v).to(torch.int32)


def signed_absmax(x: torch.Tensor) -> torch.Tensor:
    """The value of largest |x| over the last dim, first one on ties, from max = 0 (ggml's
    `if (ax > amax) { amax = ax; max = x[i]; }` loops): +0.0 for an all-zero row.

    From the max and the min (two reductions, no |x| copy); only rows whose extremes are +a
    and -a look for the first of them."""
    mx = x.amax(dim=-1)
    mn = x.amin(dim=-1)
    neg = mn.neg()
    out = torch.where(neg > mx, mn, mx).add_(0.0)  # -0.0 + 0.0 = +0.0: ggml's max = 0
    tie = (neg == mx) & (mx != 0)
    if bool(tie.any()):
        xt = x[tie]
        out[tie] = torch.gather(xt, -1, xt.abs().argmax(dim=-1, keepdim=True)).squeeze(-1)
    return out


def _codes(v: torch.Tensor, lo: int, hi: int, finite: bool = True) -> torch.Tensor:
    """In place: v -> float(MAX(lo, MIN(hi, nearest_int(v)))), as ggml's int codes become
    floats in its sums: +0.0 for a code 0 (round(-0.3) is -0.0; adding 0.0 makes it +0.0).
    finite=False (an inverse scale overflowed, as on subnormal blocks): inf and NaN give lo,
    as the int32 cast of the integer path did (INT_MIN, clamped)."""
    if not finite:
        v.nan_to_num_(nan=lo, posinf=lo, neginf=lo)
    return v.round_().clamp_(lo, hi).add_(0.0)


def _finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t).all())


def make_qx_quants(
    x: torch.Tensor, nmax: int, qw: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """make_qx_quants(n, nmax, x, L, rmse_type=1, qw) on x (N, n): (scale, codes 0..2nmax-1).

    Weights are qw when given, else x*x (rmse_type 1). The 19 candidate scales are
    independent, so all are rounded and summed at once, laid out (n, candidates, N) so that
    the element-by-element sums run over contiguous slices; ggml's sequential choice (the
    first strictly better candidate wins) then runs over the candidates' sums, and the
    codes are rounded again with the chosen candidate's iscale (the same float ops).
    """
    n = x.shape[-1]
    mx = signed_absmax(x)
    zero = mx.abs() < GROUP_MAX_EPS
    safe = torch.where(zero, torch.ones_like(mx), mx)
    xt = x.t().contiguous()  # (n, N)
    w = xt * xt if qw is None else qw.t().contiguous()
    wx = w * xt
    # candidate 0 is the plain -nmax/max, then is = -9..9 without 0.
    steps = [float(np.float32(-nmax))] + [
        -float(np.float32(np.float32(nmax) + np.float32(0.1) * np.float32(i)))
        for i in range(-9, 10)
        if i
    ]
    iscale = torch.stack([torch.full_like(safe, s) / safe for s in steps])  # (S, N)
    fin = _finite(iscale)
    lf = _codes(iscale.unsqueeze(0) * xt.unsqueeze(1), -nmax, nmax - 1, fin)  # (n, S, N)
    sums = torch.empty((n, 2, *iscale.shape))
    torch.mul(wx.unsqueeze(1), lf, out=sums[:, 0])  # w*x[i]*l
    torch.mul(w.unsqueeze(1), lf, out=sums[:, 1]).mul_(lf)  # w*l*l
    del lf
    sumlx, suml2 = seq_sum0(sums)
    scale = torch.where(suml2[0] != 0, sumlx[0] / torch.where(suml2[0] != 0, suml2[0], 1.0), 0.0)
    best = scale * sumlx[0]
    pick = iscale[0]
    for s in range(1, len(steps)):
        better = (suml2[s] > 0) & (sumlx[s] * sumlx[s] > best * suml2[s])
        new_scale = sumlx[s] / torch.where(suml2[s] != 0, suml2[s], 1.0)
        scale = torch.where(better, new_scale, scale)
        best = torch.where(better, scale * sumlx[s], best)
        pick = torch.where(better, iscale[s], pick)
    lv = _codes(pick.unsqueeze(-1) * x, -nmax, nmax - 1, fin).to(torch.int32) + nmax
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
    x - min with the new min, so the loop over the nstep + 1 steps stays a loop. Each step
    works on (n, N) tensors (element-by-element sums over contiguous slices, its three sums
    stacked into one), and the codes are rounded once more at the end from the best step's
    iscale and min (the same float ops as in that step).
    """
    n, count = x.shape[-1], x.shape[0]
    xt = x.t().contiguous()  # (n, N)
    wt = w.t().contiguous()
    mn = xt.amin(0).clamp(max=0.0)  # if (min > 0) min = 0
    mx = xt.amax(0)
    sum_w = seq_sum0(wt)
    sum_x = seq_sum0(wt * xt)
    flat = mx == mn
    one = torch.ones_like(mx)
    iscale = rdiv(f32(nmax), torch.where(flat, one, mx - mn))
    scale = rdiv(1.0, iscale)
    lf = _codes((xt - mn).mul_(iscale), 0, nmax, _finite(iscale))
    diff = (scale * lf).add_(mn).sub_(xt)
    best = seq_sum0((diff.abs_() if use_mad else diff.mul_(diff)).mul_(wt))
    code_iscale, code_min, cur_min = iscale, mn, mn
    sums = torch.empty((n, 3, count))
    for i in range(nstep + 1):
        step = f32(
            np.float32(np.float32(rmin) + np.float32(rdelta) * np.float32(i)) + np.float32(nmax)
        )
        iscale = rdiv(step, torch.where(flat, one, mx - cur_min))
        lf = _codes((xt - cur_min).mul_(iscale), 0, nmax, _finite(iscale))
        wl = torch.mul(wt, lf, out=sums[:, 0])
        torch.mul(wl, lf, out=sums[:, 1])
        torch.mul(wl, xt, out=sums[:, 2])
        sum_l, sum_l2, sum_xl = seq_sum0(sums)
        det = sum_w * sum_l2 - sum_l * sum_l
        ok_det = det > 0
        det_s = torch.where(ok_det, det, 1.0)
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / det_s
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det_s
        pos = this_min > 0
        this_min = torch.where(pos, 0.0, this_min)
        this_scale = torch.where(pos, sum_xl / torch.where(sum_l2 != 0, sum_l2, 1.0), this_scale)
        diff = lf.mul_(this_scale).add_(this_min).sub_(xt)
        cur_err = seq_sum0((diff.abs_() if use_mad else diff.mul_(diff)).mul_(wt))
        better = ok_det & (cur_err < best)
        best = torch.where(better, cur_err, best)
        scale = torch.where(better, this_scale, scale)
        code_iscale = torch.where(better, iscale, code_iscale)
        code_min = torch.where(better, cur_min, code_min)
        cur_min = torch.where(better, this_min, cur_min)
    lv = _codes(
        (x - code_min.unsqueeze(-1)).mul_(code_iscale.unsqueeze(-1)), 0, nmax, _finite(code_iscale)
    )
    lv = torch.where(flat.unsqueeze(-1), 0, lv.to(torch.int32))
    scale = torch.where(flat, 0.0, scale)
    return scale, -cur_min, lv


def make_q3_quants(x: torch.Tensor, nmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """make_q3_quants(n, nmax, x, L, do_rmse=true) on x (N, n): (scale (N,), codes 0..2nmax-1).

    After the first rounding ggml revisits the elements one at a time (5 passes), moving one
    code when that raises sumlx^2/suml2; the running sums make it sequential over elements,
    so this loops over passes and elements, each step vectorized over sub-blocks (on (n, N)
    tensors, so that element i of every sub-block is one contiguous slice). A pass without
    change leaves the state as it is, so running all 5 equals ggml's early break.
    """
    mx = signed_absmax(x)
    zero = mx.abs() < GROUP_MAX_EPS
    iscale = rdiv(f32(-nmax), torch.where(zero, 1.0, mx))
    xt = x.t().contiguous()  # (n, N)
    lv = _codes(xt * iscale, -nmax, nmax - 1, _finite(iscale))  # float codes, +0.0 for 0
    w = xt * xt
    wx = w * xt
    sums = torch.empty((x.shape[-1], 2, x.shape[0]))
    torch.mul(wx, lv, out=sums[:, 0])
    torch.mul(w, lv, out=sums[:, 1]).mul_(lv)
    sumlx, suml2 = seq_sum0(sums)
    for _ in range(5):
        for i in range(x.shape[-1]):
            li, wi, wxi = lv[i], w[i], wx[i]
            slx = sumlx - wxi * li
            sl2 = suml2 - wi * li * li
            pos = slx > 0
            new_l = _codes(xt[i] * sl2 / torch.where(pos, slx, 1.0), -nmax, nmax - 1, False)
            slx = slx + wxi * new_l
            sl2 = sl2 + wi * new_l * new_l
            take = pos & (new_l != li) & (sl2 > 0) & (slx * slx * suml2 > sumlx * sumlx * sl2)
            lv[i] = torch.where(take, new_l, li)
            sumlx = torch.where(take, slx, sumlx)
            suml2 = torch.where(take, sl2, suml2)
    scale = torch.where(suml2 > 0, sumlx / torch.where(suml2 > 0, suml2, 1.0), 0.0)
    scale = torch.where(zero, 0.0, scale)
    lv = torch.where(zero.unsqueeze(-1), 0, lv.t().to(torch.int32) + nmax)
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
