"""AWQ (Lin et al. 2023, arXiv:2306.00978): activation-aware scales and clipping for weights.

Weight-only quantization loses most on the input channels that carry large activations. AWQ
multiplies those weight columns by s_j > 1 before rounding (and divides the activation by s,
folded into the preceding op exactly as SmoothQuant does), so their relative rounding error
shrinks. Then it shrinks each group's clip range where that lowers the output error.

Both searches follow the reference code (mit-han-lab/llm-awq ``auto_scale`` /
``auto_clip``, AutoAWQ's ``_search_best_scale`` / ``_search_best_clip``) but measure the
error of the Linear outputs themselves, not of the enclosing block, which keeps them pure
functions of (weights, activation sample, quantizer):

* scales: s = a^r / sqrt(max(a^r)·min(a^r)) with a = mean|X_j| and r in {0, 1/n, ...,
  (n−1)/n}; the r minimising Σ_i ‖X W_iᵀ − (X/s) Q(W_i·s)ᵀ‖² wins. r = 0 is s = 1, plain
  round-to-nearest, so on the sample AWQ is never worse than RTN.
* clip: per (row, group), max_val = max|w| · (1 − i/n) for i < max_shrink·n; the value
  minimising the mean squared group output error Σ_{k∈g} x_k (Q(w)_k − w_k) wins. i = 0 is
  no clipping.

Nothing is rounded here: ``quantize`` / ``quantize_with_clip`` are the caller's fake
quantizers (any format), and the results are a scale vector and clip values the caller
hands to its weight spec (formats' ``clip`` argument, via ``awq_clip_range``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch

from lowbit.errors import InvalidInputError, InvalidSpecError
from lowbit.formats.checks import check_finite
from lowbit.formats.granularity import PerGroup, from_blocks, to_blocks

logger = logging.getLogger(__name__)

Quantizer = Callable[[torch.Tensor], torch.Tensor]
ClipQuantizer = Callable[[torch.Tensor, tuple[torch.Tensor, torch.Tensor]], torch.Tensor]

# Floor on a^r before normalising, as in llm-awq (keeps s finite for silent channels).
_MIN_SCALE = 1e-4
# Upper bound on the elements of one (rows, samples, groups) error tensor in the clip search.
_CLIP_CHUNK_ELEMENTS = 1 << 24


def _check_sample(x_sample: torch.Tensor, k: int) -> torch.Tensor:
    if x_sample.dim() != 2 or x_sample.shape[1] != k or x_sample.shape[0] == 0:
        raise InvalidInputError(
            f"x_sample must be (M, {k}) rows of the layer input with M >= 1, got "
            f"{tuple(x_sample.shape)}; flatten batch and sequence axes into M"
        )
    check_finite(x_sample, what="x_sample")
    return x_sample.detach().to(torch.float32)


def _check_grid(n_grid: int) -> None:
    if n_grid < 1:
        raise InvalidSpecError(f"n_grid must be >= 1, got {n_grid}; 20 is the usual value")


def _check_output(name: str, got: torch.Tensor, want: torch.Tensor) -> None:
    if got.shape != want.shape:
        raise InvalidSpecError(
            f"{name} returned shape {tuple(got.shape)} for a weight of shape "
            f"{tuple(want.shape)}; it must return the fake-quantized weight (same shape)"
        )


def awq_scales_for_ratio(act_mean_abs: torch.Tensor, ratio: float) -> torch.Tensor:
    """AWQ's candidate scales a^r / sqrt(max(a^r)·min(a^r)), float32 of shape (K,)."""
    s = act_mean_abs.detach().to(torch.float32).abs().pow(ratio).clamp(min=_MIN_SCALE)
    return s / (s.max() * s.min()).sqrt()


@torch.no_grad()
def awq_search_scales(
    weights: Sequence[torch.Tensor],
    x_sample: torch.Tensor,
    act_mean_abs: torch.Tensor,
    quantize: Quantizer | Sequence[Quantizer],
    n_grid: int = 20,
) -> torch.Tensor:
    """Search AWQ's per-input-channel scales for Linears that read the same input.

    Args:
        weights: the weights (N_i, K) of every Linear fed by the same activation (e.g. q, k
            and v projections); they share one scale vector, since one activation is divided.
        x_sample: (M, K) rows of that activation (``ChannelStatsObserver.sample``).
        act_mean_abs: mean|X_j| over the calibration data, (K,)
            (``ChannelStatsObserver.mean_abs``).
        quantize: the target format's fake quantizer, weight (N, K) -> dequantized weight
            of the same shape, e.g. ``lambda w: fake_quantize(w, choose_qparams(w, int4,
            PerGroup(128)))``; or one such quantizer per weight, in the order of ``weights``
            (Linears that share an input but not a storage type).
        n_grid: number of ratios r = i / n_grid, i = 0 .. n_grid − 1, to try.

    Returns:
        float32 scales s of shape (K,). Use them as ``apply_input_scales(weights, s)`` before
        quantizing, and divide the activation by s (``fold_into_layernorm`` or
        ``fold_into_linear_output``).
    """
    _check_grid(n_grid)
    if not weights:
        raise InvalidInputError("give at least one weight of shape (N, K)")
    k = weights[0].shape[-1]
    for w in weights:
        if w.dim() != 2 or w.shape[1] != k:
            raise InvalidInputError(
                f"weights that share one input must all be (N_i, {k}); got {tuple(w.shape)}"
            )
        check_finite(w, what="weight")
    if act_mean_abs.shape != (k,):
        raise InvalidInputError(
            f"act_mean_abs must have shape ({k},), one value per input channel; got "
            f"{tuple(act_mean_abs.shape)}"
        )
    check_finite(act_mean_abs, what="act_mean_abs")
    x = _check_sample(x_sample, k)
    quantizers = list(quantize) if isinstance(quantize, Sequence) else [quantize] * len(weights)
    if len(quantizers) != len(weights):
        raise InvalidInputError(
            f"give one quantizer per weight ({len(weights)}), or one for all; got {len(quantizers)}"
        )
    ws = [w.detach().to(torch.float32).to(x.device) for w in weights]
    a = act_mean_abs.to(x.device)
    reference = [x @ w.T for w in ws]

    best_loss, best_ratio, best_s = float("inf"), 0.0, torch.ones(k, device=x.device)
    for i in range(n_grid):
        ratio = i / n_grid
        s = awq_scales_for_ratio(a, ratio)
        loss = 0.0
        for w, ref, fake in zip(ws, reference, quantizers, strict=True):
            scaled = w * s
            q = fake(scaled)
            _check_output("quantize", q, scaled)
            # (X/s) Q(W·s)ᵀ = X (Q(W·s)/s)ᵀ: one matmul on the unscaled sample.
            loss += float((x @ (q.to(torch.float32) / s).T - ref).pow(2).sum())
        logger.debug("awq scale search: ratio %.3f loss %.6g", ratio, loss)
        if loss < best_loss:
            best_loss, best_ratio, best_s = loss, ratio, s
    logger.debug("awq scale search: best ratio %.3f (loss %.6g)", best_ratio, best_loss)
    return best_s


def awq_clip_range(
    weight: torch.Tensor, max_val: torch.Tensor, group_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The clip range (lo, hi) per (row, group) that clipping ``weight`` to ±max_val gives.

    lo = max(min w, −max_val), hi = min(max w, max_val) per group: the range of the clamped
    group, as llm-awq's ``apply_clip`` followed by min/max quantization. Pass it as formats'
    ``clip=(lo, hi)`` with ``PerGroup(group_size)``; a symmetric spec then uses ±max_val, an
    asymmetric one the clamped group's own range. Shapes: (N, ceil(K / group_size)) each.
    """
    if weight.dim() != 2:
        raise InvalidInputError(f"weight must be 2-D (N, K), got {tuple(weight.shape)}")
    g = PerGroup(group_size)
    blocks = to_blocks(weight.detach().to(torch.float32), g)
    shape = tuple(weight.shape)
    lo_w = from_blocks(blocks.amin(dim=-1, keepdim=True), shape, g)
    hi_w = from_blocks(blocks.amax(dim=-1, keepdim=True), shape, g)
    if max_val.shape != lo_w.shape:
        raise InvalidInputError(
            f"max_val must have shape {tuple(lo_w.shape)} (rows, groups), got "
            f"{tuple(max_val.shape)}; use the result of awq_search_clip for this weight"
        )
    m = max_val.to(torch.float32).to(lo_w.device)
    return torch.maximum(lo_w, -m), torch.minimum(hi_w, m)


def _grouped(t: torch.Tensor, group_size: int) -> torch.Tensor:
    """(R, K) -> (R, G, group_size), zero-padding a ragged last group (zeros add nothing to
    the group's dot products)."""
    pad = -t.shape[1] % group_size
    if pad:
        t = torch.nn.functional.pad(t, (0, pad))
    return t.reshape(t.shape[0], -1, group_size)


@torch.no_grad()
def awq_search_clip(
    weight: torch.Tensor,
    x_sample: torch.Tensor,
    group_size: int,
    quantize_with_clip: ClipQuantizer,
    n_grid: int = 20,
    max_shrink: float = 0.5,
) -> torch.Tensor:
    """Search AWQ's clip value per (row, group) of ``weight``.

    Args:
        weight: (N, K), already scaled by AWQ's s if scales are used (then pass x_sample / s).
        x_sample: (M, K) rows of the layer input (a few hundred are enough).
        group_size: the target format's group size along K.
        quantize_with_clip: ``(w, (lo, hi)) -> fake-quantized w`` for a block of rows
            (n, K) and clip bounds of shape (n, G); e.g. ``lambda w, c: fake_quantize(w,
            choose_qparams(w, int4, PerGroup(128), clip=c))``. It must treat every (row,
            group) on its own (rows are searched in chunks).
        n_grid: resolution of the shrink grid.
        max_shrink: the largest fraction of max|w| cut away, in [0, 1).

    Returns:
        max_val, float32 (N, ceil(K / group_size)). Quantize with
        ``clip=awq_clip_range(weight, max_val, group_size)`` (or ``clip=max_val`` for a
        symmetric spec).
    """
    _check_grid(n_grid)
    if not 0.0 <= max_shrink < 1.0:
        raise InvalidSpecError(f"max_shrink must be in [0, 1), got {max_shrink}; 0.5 is usual")
    if weight.dim() != 2:
        raise InvalidInputError(f"weight must be 2-D (N, K), got {tuple(weight.shape)}")
    check_finite(weight, what="weight")
    g = PerGroup(group_size)
    n, k = weight.shape
    x = _check_sample(x_sample, k)
    w_all = weight.detach().to(torch.float32).to(x.device)
    xg = _grouped(x, group_size)  # (M, G, gs)
    n_groups = xg.shape[1]
    chunk = max(1, _CLIP_CHUNK_ELEMENTS // (x.shape[0] * n_groups))
    steps = max(1, int(max_shrink * n_grid))

    results = []
    for start in range(0, n, chunk):
        w = w_all[start : start + chunk]
        shape = tuple(w.shape)
        blocks = to_blocks(w, g)
        lo_w = from_blocks(blocks.amin(dim=-1, keepdim=True), shape, g)
        hi_w = from_blocks(blocks.amax(dim=-1, keepdim=True), shape, g)
        org_max = torch.maximum(lo_w.abs(), hi_w)
        best_err = torch.full_like(org_max, float("inf"))
        best_max = org_max.clone()
        for i in range(steps):
            max_val = org_max * (1 - i / n_grid)
            clip = (torch.maximum(lo_w, -max_val), torch.minimum(hi_w, max_val))
            q = quantize_with_clip(w, clip)
            _check_output("quantize_with_clip", q, w)
            dw = _grouped(q.to(torch.float32) - w, group_size)  # (n, G, gs)
            # Per (row, sample, group) output error of the group's partial dot product.
            err = torch.einsum("mgk,ngk->nmg", xg, dw).pow(2).mean(dim=1)  # (n, G)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_max = torch.where(better, max_val, best_max)
        results.append(best_max)
    return torch.cat(results)
