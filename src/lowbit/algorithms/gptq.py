"""GPTQ: quantize a Linear weight column by column, pushing each column's rounding error onto
the columns not yet quantized so that the layer's output error ‖XWᵀ − XŴᵀ‖² stays small.

Frantar, Ashkboos, Hoefler, Alistarh 2022, "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers" (arXiv:2210.17323); the steps follow the reference
implementation (IST-DASLab/gptq ``fasterquant``, also AutoGPTQ and GPTQModel):

1. Dead inputs (H_ii = 0: the input was always zero) get H_ii = 1 and their weights set to 0.
2. Dampening: λ = damp · mean(diag H) is added to the diagonal. If H + λI (or its inverse) is
   still not positive definite, λ is raised (damp ×10, at least 0.01, at most 1.0) as
   AutoGPTQ/GPTQModel do, and an error is raised once damp = 1 fails too.
3. U = upper Cholesky factor of (H + λI)⁻¹. Column j is rounded to q_j, its error
   e = (w_j − q_j) / U_jj is subtracted from the later columns as e · U_j,j+1:, in blocks of
   ``block_size`` columns with one matrix product per block for the columns after the block
   ("lazy batch updates"; the result does not depend on ``block_size`` except for float
   summation order).
4. Parameters per output channel are chosen once from the whole weight. Per group they are
   chosen from the group's error-updated weights when its first column is reached, or, with
   ``static_groups``, up front from the original weights.
5. ``act_order``: columns are processed by descending diag(H) (the inputs with the most
   energy first) and the codes put back in the original order. Groups must then be static,
   and group membership stays by original column index, so the layout is a plain
   PerGroup(group_size) with no group index table.

Each column is rounded with ``lowbit.formats.affine`` (``choose_qparams`` per group, then
``quantize``/``dequantize``), so ``dequantize(codes, qparams)`` is exactly the weight GPTQ
chose, and ``IntPackedTensor.from_codes(codes, qparams)`` stores it.

Differences from the reference, on purpose: parameters are chosen after dead columns are
zeroed (their weights never reach the output), and a group that starts inside a block is
chosen from its fully updated weights (the reference reads stale values when group_size is
not a multiple of block_size).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator

import torch

from lowbit.algorithms.rtn import check_weight, stored_qparams
from lowbit.errors import InvalidInputError, InvalidSpecError
from lowbit.formats.affine import QParams, choose_qparams, dequantize, quantize
from lowbit.formats.checks import check_finite
from lowbit.formats.granularity import PerAxis, PerGroup
from lowbit.formats.weight_format import WeightFormat

__all__ = ["check_hessian", "gptq_quantize", "inverse_cholesky"]

logger = logging.getLogger(__name__)

_MAX_DAMP = 1.0


def check_hessian(hessian: torch.Tensor, k: int) -> None:
    if not isinstance(hessian, torch.Tensor) or not hessian.is_floating_point():
        raise InvalidInputError(
            "hessian must be a float tensor (e.g. HessianObserver(...).hessian()), got "
            f"{type(hessian).__name__ if not isinstance(hessian, torch.Tensor) else hessian.dtype}"
        )
    if tuple(hessian.shape) != (k, k):
        raise InvalidInputError(
            f"hessian has shape {tuple(hessian.shape)} but a weight with in_features={k} needs "
            f"({k}, {k}); build it from the inputs of this same layer"
        )
    check_finite(hessian, what="hessian")
    if bool((torch.diagonal(hessian) < 0).any()):
        raise InvalidInputError(
            "hessian has negative diagonal entries, so it is not 2/n·XᵀX of any inputs; "
            "build it with HessianObserver"
        )


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run LAPACK on one thread: MKL's multi-threaded Cholesky rounds differently for each
    thread count, and GPTQ's codes followed (issue 11). K×K is small next to the column loop."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def inverse_cholesky(h: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + λI)⁻¹, λ = damp · mean(diag H), raising damp on failure.

    Computed on one thread, so the result does not depend on torch's thread count."""
    with _one_thread():
        return _damped_inverse_cholesky(h, damp)


def _damped_inverse_cholesky(h: torch.Tensor, damp: float) -> torch.Tensor:
    mean_diag = torch.diagonal(h).mean()
    d = damp
    while True:
        damped = h.clone()
        torch.diagonal(damped).add_(d * mean_diag)
        lower, info = torch.linalg.cholesky_ex(damped)
        if int(info) == 0:
            upper, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(lower), upper=True)
            if int(info) == 0 and bool(torch.isfinite(upper).all()):
                if d != damp:
                    logger.warning(
                        "GPTQ: the hessian needed damp=%g (asked %g) to be positive definite",
                        d,
                        damp,
                    )
                return upper
        if d >= _MAX_DAMP:
            raise InvalidInputError(
                f"the hessian is not positive definite even with damp={d:g} (λ = damp · "
                "mean(diag H)); it is not a sum of xᵀx: check that it was built from this "
                "layer's inputs (HessianObserver) and holds no corrupted values"
            )
        d = min(max(10 * d, 0.01), _MAX_DAMP)


def _group_size(fmt: WeightFormat) -> int | None:
    """The group size GPTQ works with (None: per output channel), or the reason it cannot."""
    if fmt.family != "int":
        raise InvalidSpecError(f"GPTQ rounds integer formats, not {fmt.qtype.name}")
    g = fmt.granularity
    if isinstance(g, PerAxis) and g.axis == 0:
        return None
    if isinstance(g, PerGroup) and g.axis in (-1, 1):
        return g.size
    raise InvalidSpecError(
        f"GPTQ stores one scale per output channel (PerAxis(0)) or per group along the input "
        f"dim (PerGroup(size)), not {g}; pick one of those"
    )


def _stack(params: list[QParams], group_size: int) -> QParams:
    """Per-group QParams (each PerAxis(0), shape (N,)) as one PerGroup QParams (N, G)."""
    first = params[0]

    def cat(name: str) -> torch.Tensor | None:
        if getattr(first, name) is None:
            return None
        return torch.stack([getattr(p, name) for p in params], dim=1)

    return QParams(
        cat("scale"),
        first.qtype,
        PerGroup(group_size),
        first.qmin,
        first.qmax,
        zero_point=cat("zero_point"),
        offset=cat("offset"),
    )


def gptq_quantize(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    fmt: WeightFormat,
    *,
    damp: float = 0.01,
    act_order: bool = False,
    static_groups: bool = False,
    block_size: int = 128,
) -> tuple[torch.Tensor, QParams]:
    """Quantize a Linear weight with GPTQ (see the module docstring for the steps).

    Args:
        weight: (N, K) float tensor (out_features, in_features); not modified.
        hessian: (K, K) float tensor, 2/n·XᵀX of the layer's inputs (HessianObserver);
            float64 keeps the factorisation in float64. Not modified.
        fmt: an integer WeightFormat with PerAxis(0) (one scale per output channel) or
            PerGroup(size) along the input dim (K need not be a multiple of it; the last
            group is shorter); its symmetry, form, range and scale dtype are used.
        damp: dampening as a fraction of mean(diag H) (the reference's percdamp).
        act_order: quantize columns by descending diag(H); with groups it needs
            ``static_groups=True``.
        static_groups: choose group parameters up front from the original weights.
        block_size: columns per lazy batch update (speed only).

    Returns:
        (codes, qparams): codes (N, K) int8/uint8 (the qtype's storage), qparams of
        ``fmt.granularity`` with scales rounded to ``fmt.scale_dtype`` (widened to float32);
        ``formats.affine.dequantize(codes, qparams)`` is the quantized weight.

    Raises:
        InvalidInputError: bad shapes, NaN/Inf, or a hessian that is not positive definite
            even with damp = 1.
        InvalidSpecError: bad options, or act_order with groups but no static_groups.
    """
    check_weight(weight)
    n, k = weight.shape
    group_size = _group_size(fmt)
    check_hessian(hessian, k)
    if not (isinstance(damp, int | float) and math.isfinite(damp) and damp >= 0):
        raise InvalidSpecError(f"damp must be a finite number >= 0 (e.g. 0.01), got {damp!r}")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise InvalidSpecError(f"block_size must be a positive int, got {block_size!r}")
    if act_order and group_size is not None and not static_groups:
        raise InvalidSpecError(
            "act_order with group_size needs static_groups=True: groups chosen in activation "
            "order would not match a fixed PerGroup layout; pass static_groups=True, or "
            "act_order=False"
        )

    def choose(x: torch.Tensor) -> QParams:
        qp = choose_qparams(
            x,
            fmt.qtype,
            PerAxis(0),
            symmetric=fmt.symmetric,
            restricted=fmt.restricted,
            form=fmt.form,
        )
        return stored_qparams(qp, fmt.scale_dtype)

    w = weight.detach().to(torch.float32, copy=True)
    check_finite(w, what="weight")
    h = hessian.detach().to(
        device=w.device, dtype=torch.promote_types(hessian.dtype, torch.float32), copy=True
    )
    dead = torch.diagonal(h) == 0
    torch.diagonal(h)[dead] = 1.0
    w[:, dead] = 0.0

    gs = group_size or k
    fixed = choose(w) if group_size is None else None
    static = None
    if static_groups and group_size is not None:
        static = [choose(w[:, g : g + gs]) for g in range(0, k, gs)]

    perm = torch.arange(k, device=w.device)
    if act_order:
        perm = torch.argsort(torch.diagonal(h), descending=True, stable=True)
        w, h = w[:, perm], h[perm][:, perm]
    hinv = inverse_cholesky(h, damp).to(torch.float32)
    del h
    order = perm.tolist()  # original column index of each processed column, on the host

    # Column-major from here: column j of the weight is row j of wt, a contiguous slice (the
    # column loop is the hot path: one pass per input feature).
    wt = w.t().contiguous()
    del w
    codes = torch.empty(k, n, dtype=fmt.qtype.storage, device=wt.device)
    chosen: list[QParams] = []
    current = fixed  # per group: set at column 0, the first group's first column
    loss = torch.zeros((), dtype=torch.float64, device=wt.device)
    for i1 in range(0, k, block_size):
        i2 = min(i1 + block_size, k)
        w1 = wt[i1:i2]  # a view: updates within the block land in wt
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if static is not None:
                current = static[order[col] // gs]
            elif fixed is None and col % gs == 0:
                # The group's weights as updated by every column quantized so far: inside
                # the block they are current; after it the block's pending update is added.
                g2 = min(col + gs, k)
                part = [w1[i : min(g2, i2) - i1]]
                if g2 > i2:
                    part.append(wt[i2:g2] - hinv[i1:col, i2:g2].t() @ err1[:i])
                current = choose(torch.cat(part).t())
                chosen.append(current)
            q = quantize(w1[i], current, checked=False)  # wt was checked once, above
            codes[col] = q
            e = torch.sub(w1[i], dequantize(q, current), out=err1[i]).div_(hinv1[i, i])
            w1[i:] -= torch.outer(hinv1[i, i:], e)
        loss += (err1.double() ** 2).sum() / 2  # per block: the column loop is the hot path
        wt[i2:] -= hinv[i1:i2, i2:].t() @ err1
    codes = codes.t()

    if act_order:
        codes = codes[:, torch.argsort(perm)]
    logger.debug("GPTQ %dx%d: objective estimate %.6g", n, k, float(loss))
    if fixed is not None:
        return codes, fixed
    return codes, _stack(static if static is not None else chosen, gs)
