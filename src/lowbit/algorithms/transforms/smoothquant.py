"""SmoothQuant (Xiao et al. 2022, arXiv:2211.10438): migrate activation outliers into weights.

A Linear layer computes Y = X Wᵀ with X of shape (M, K) and W of shape (N, K). For any
positive per-input-channel vector s of shape (K,),

    Y = (X diag(s)⁻¹) (W diag(s))ᵀ,

so dividing the activation channel j by s_j and multiplying the weight column j by s_j leaves
the output unchanged in exact arithmetic. SmoothQuant picks

    s_j = max|X_j|^α / max|W_j|^(1−α)

(α = 0.5 by default; max|W_j| over every Linear that reads X), which flattens the few
activation channels with large outliers so that per-tensor or per-token int8 activation
quantization loses less, at the price of slightly harder weights.

These are pure transforms: nothing is rounded here. The caller scales the weights with
``apply_input_scales``, quantizes them with any weight spec, and divides the activation by s
by folding 1/s into the operation that produces X: a LayerNorm/RMSNorm whose output feeds
only these Linears (``fold_into_layernorm``), or the output rows of a preceding Linear
(``fold_into_linear_output``; also valid through per-channel linear ops such as attention's
value path, softmax(QKᵀ)·V). AWQ uses the same helpers with its own scales.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lowbit.errors import InvalidInputError, InvalidSpecError
from lowbit.formats.checks import check_finite

# The reference implementation's floor on the scales (smoothquant/smooth.py).
_MIN_SCALE = 1e-5


def _check_vector(name: str, v: torch.Tensor, length: int | None = None) -> None:
    if not isinstance(v, torch.Tensor) or v.dim() != 1:
        shape = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
        raise InvalidInputError(f"{name} must be a 1-D tensor of per-channel values, got {shape}")
    if length is not None and v.shape[0] != length:
        raise InvalidInputError(
            f"{name} has {v.shape[0]} channels but the weights have {length} input channels; "
            "give one value per input channel (the last dimension of the weights)"
        )
    check_finite(v, what=name)


def check_input_scales(s: torch.Tensor, in_features: int | None = None) -> None:
    """Raise InvalidInputError unless ``s`` is a finite, positive (K,) vector."""
    _check_vector("scales", s, in_features)
    if bool((s <= 0).any()):
        raise InvalidInputError(
            "scales must be positive (dividing an activation by 0 or flipping its sign is not "
            "an equivalence transform); use smoothquant_scales or awq_search_scales"
        )


def input_channel_absmax(weights: Sequence[torch.Tensor]) -> torch.Tensor:
    """max|W_j| per input channel j over every weight (N_i, K) that reads the same input.

    Returns float32 of shape (K,).
    """
    if not weights:
        raise InvalidInputError("give at least one weight of shape (N, K)")
    k = weights[0].shape[-1]
    out = torch.zeros(k, dtype=torch.float32, device=weights[0].device)
    for w in weights:
        if w.dim() != 2 or w.shape[1] != k:
            raise InvalidInputError(
                f"weights that share one input must all be (N_i, {k}); got {tuple(w.shape)}"
            )
        out = torch.maximum(out, w.detach().abs().amax(dim=0).to(torch.float32))
    return out


def smoothquant_scales(
    act_absmax: torch.Tensor, weight_absmax: torch.Tensor, alpha: float = 0.5
) -> torch.Tensor:
    """SmoothQuant's per-input-channel scales s_j = max|X_j|^α / max|W_j|^(1−α).

    Args:
        act_absmax: max|X_j| per input channel, shape (K,) (e.g.
            ``ChannelStatsObserver.max_abs``).
        weight_absmax: max|W_j| per input channel over every Linear reading X, shape (K,)
            (``input_channel_absmax``).
        alpha: migration strength in [0, 1]: 0 leaves activations alone (s = 1/max|W_j|),
            1 moves all of their range into the weights. 0.5 is the paper's default;
            0.75-0.85 suits models with stronger outliers.

    Returns:
        float32 scales of shape (K,), clamped to >= 1e-5 as in the reference code. A channel
        whose activation or weight maximum is 0 carries no signal through this layer and gets
        s = 1, so no channel is divided by a tiny number that later data could blow up.
    """
    if not 0.0 <= alpha <= 1.0:
        raise InvalidSpecError(f"alpha must be in [0, 1], got {alpha}; 0.5 is the usual value")
    _check_vector("act_absmax", act_absmax)
    _check_vector("weight_absmax", weight_absmax, act_absmax.shape[0])
    a = act_absmax.detach().to(torch.float32).abs()
    w = weight_absmax.detach().to(torch.float32).abs().to(a.device)
    dead = (a == 0) | (w == 0)
    s = a.pow(alpha) / w.clamp(min=_MIN_SCALE).pow(1.0 - alpha)
    s = s.clamp(min=_MIN_SCALE)
    return torch.where(dead, torch.ones_like(s), s)


def apply_input_scales(weights: Sequence[torch.Tensor], s: torch.Tensor) -> list[torch.Tensor]:
    """W·diag(s) for each weight (N_i, K): column j multiplied by s_j. New tensors; the
    inputs are not modified. The activation must be divided by s (see the fold helpers)."""
    out = []
    for w in weights:
        if w.dim() != 2:
            raise InvalidInputError(f"weights must be 2-D (N, K), got {tuple(w.shape)}")
        check_input_scales(s, w.shape[1])
        out.append(w * s.to(w.dtype).to(w.device))
    return out


def fold_into_layernorm(
    ln_weight: torch.Tensor, ln_bias: torch.Tensor | None, s: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(γ/s, β/s): a LayerNorm (or RMSNorm, ``ln_bias=None``) whose output is divided by s.

    Only equivalent when the norm's output feeds nothing but the Linears whose weights were
    scaled (true for the pre-norms of Llama-style blocks; not for post-norm BERT blocks, whose
    LayerNorm output is also the residual stream).
    """
    check_input_scales(s, ln_weight.shape[-1])
    s = s.to(ln_weight.dtype).to(ln_weight.device)
    bias = None if ln_bias is None else ln_bias / s
    return ln_weight / s, bias


def fold_into_linear_output(
    prev_weight: torch.Tensor, prev_bias: torch.Tensor | None, s: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(W_prev / s[:, None], b_prev / s): a preceding Linear (K, K_in) whose output channel j
    is divided by s_j, so that the next Linear sees X/s."""
    if prev_weight.dim() != 2:
        raise InvalidInputError(
            f"prev_weight must be 2-D (K, K_in), got {tuple(prev_weight.shape)}"
        )
    check_input_scales(s, prev_weight.shape[0])
    s = s.to(prev_weight.dtype).to(prev_weight.device)
    bias = None if prev_bias is None else prev_bias / s
    return prev_weight / s[:, None], bias
