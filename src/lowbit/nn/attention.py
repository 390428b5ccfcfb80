"""SplitAttention: torch's nn.MultiheadAttention rewritten with four nn.Linear projections.

nn.MultiheadAttention keeps q/k/v in one packed parameter and hands its weights straight to
``F.multi_head_attention_forward``, so its projections are not modules a recipe can
replace (and a replaced ``out_proj`` breaks its forward). SplitAttention computes the same
function from ``q_proj``, ``k_proj``, ``v_proj`` and ``out_proj`` modules, which are then
quantized like any Linear. Same call signature and outputs as nn.MultiheadAttention.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.errors import InvalidInputError


def split_attention_unsupported(module: nn.MultiheadAttention) -> str | None:
    """Why ``module`` cannot become a SplitAttention, or None when it can."""
    if module.bias_k is not None or module.add_zero_attn:
        return "its bias_k/bias_v or add_zero_attn options are not supported by SplitAttention"
    return None


def _additive(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """A boolean mask (True = not allowed) as an additive float mask, as torch reads it."""
    if mask is None or mask.is_floating_point():
        return None if mask is None else mask.to(dtype)
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, -math.inf)


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    return layer


class SplitAttention(nn.Module):
    """Multi-head attention with separate q/k/v/out nn.Linear projections.

    Attributes:
        embed_dim, num_heads, batch_first, dropout: as nn.MultiheadAttention.
        in_proj_bias: always None: there is no packed projection (torch's encoder layers
            test it and then take their module-by-module path, which calls this module).
    """

    in_proj_bias = None

    def __init__(
        self,
        q_proj: nn.Linear,
        k_proj: nn.Linear,
        v_proj: nn.Linear,
        out_proj: nn.Linear,
        num_heads: int,
        *,
        batch_first: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if q_proj.out_features % num_heads:
            raise InvalidInputError(
                f"embed_dim={q_proj.out_features} is not divisible by num_heads={num_heads}"
            )
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = q_proj, k_proj, v_proj, out_proj
        self.embed_dim = q_proj.out_features
        self.num_heads = num_heads
        self.batch_first = batch_first
        self.dropout = dropout

    @classmethod
    def from_float(cls, module: nn.MultiheadAttention) -> SplitAttention:
        """The same attention as ``module`` (weights copied; ``module`` is not changed)."""
        reason = split_attention_unsupported(module)
        if reason is not None:
            raise InvalidInputError(f"cannot split this MultiheadAttention: {reason}")
        e = module.embed_dim
        if module._qkv_same_embed_dim:
            weights = module.in_proj_weight.detach().split(e)
        else:
            weights = (module.q_proj_weight, module.k_proj_weight, module.v_proj_weight)
        bias = module.in_proj_bias
        biases = (None,) * 3 if bias is None else bias.detach().split(e)
        q, k, v = (_linear(w.detach(), b) for w, b in zip(weights, biases, strict=True))
        out = _linear(module.out_proj.weight.detach(), module.out_proj.bias)
        return cls(
            q, k, v, out, module.num_heads, batch_first=module.batch_first, dropout=module.dropout
        )

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """As nn.MultiheadAttention.forward (``is_causal`` is a hint: ``attn_mask`` holds
        the causal mask, as torch requires)."""
        if is_causal and attn_mask is None:
            raise InvalidInputError("is_causal needs attn_mask, as in nn.MultiheadAttention")
        batched = query.dim() == 3
        if not batched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        n, length, _ = query.shape
        heads, head_dim = self.num_heads, self.embed_dim // self.num_heads

        def split(x: torch.Tensor) -> torch.Tensor:  # (N, T, E) -> (N, heads, T, head_dim)
            return x.reshape(n, -1, heads, head_dim).transpose(1, 2)

        q, k, v = split(self.q_proj(query)), split(self.k_proj(key)), split(self.v_proj(value))
        mask = _additive(attn_mask, q.dtype)
        if mask is not None and mask.dim() == 3:  # (N·heads, L, S)
            mask = mask.reshape(n, heads, *mask.shape[1:])
        padding = _additive(key_padding_mask, q.dtype)
        if padding is not None:
            padding = padding.reshape(n, 1, 1, -1)
            mask = padding if mask is None else mask + padding
        p = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = q @ k.transpose(-2, -1) / math.sqrt(head_dim)
            weights = torch.softmax(scores if mask is None else scores + mask, dim=-1)
            out = F.dropout(weights, p) @ v if p else weights @ v
            if average_attn_weights:
                weights = weights.mean(dim=1)
            if not batched:
                weights = weights.squeeze(0)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        out = self.out_proj(out.transpose(1, 2).reshape(n, length, self.embed_dim))
        if not batched:
            out = out.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        return out, weights

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}"
