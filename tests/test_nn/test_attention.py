"""SplitAttention computes what torch's nn.MultiheadAttention computes, for every layout
and mask a user passes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lowbit.errors import InvalidInputError
from lowbit.nn.attention import SplitAttention


@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kdim", [None, 6])
def test_split_attention_matches_multihead_attention(batch_first, bias, kdim) -> None:
    mha = nn.MultiheadAttention(8, 2, bias=bias, kdim=kdim, vdim=kdim, batch_first=batch_first)
    mha.eval()
    split = SplitAttention.from_float(mha)
    n, length, s = 3, 5, 4
    q = torch.randn(n, length, 8)
    kv = torch.randn(n, s, kdim or 8)
    if not batch_first:
        q, kv = q.transpose(0, 1), kv.transpose(0, 1)
    padding = torch.zeros(n, s, dtype=torch.bool)
    padding[0, -1] = True
    causal = torch.rand(length, s) > 0.7
    causal[:, 0] = False  # no row fully masked
    float_mask = torch.randn(n * 2, length, s)
    cases = [
        {},
        {"key_padding_mask": padding},
        {"attn_mask": causal, "need_weights": False},
        {"attn_mask": float_mask, "key_padding_mask": padding, "average_attn_weights": False},
    ]
    with torch.no_grad():
        for kwargs in cases:
            ref_out, ref_w = mha(q, kv, kv, **kwargs)
            out, w = split(q, kv, kv, **kwargs)
            torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-4)
            assert (w is None) == (ref_w is None)
            if w is not None:
                torch.testing.assert_close(w, ref_w, atol=1e-5, rtol=1e-4)


def test_unbatched_input_and_refused_options() -> None:
    mha = nn.MultiheadAttention(8, 4).eval()
    x = torch.randn(5, 8)
    with torch.no_grad():
        torch.testing.assert_close(SplitAttention.from_float(mha)(x, x, x)[0], mha(x, x, x)[0])
    with pytest.raises(InvalidInputError, match="bias_k"):
        SplitAttention.from_float(nn.MultiheadAttention(8, 2, add_bias_kv=True))
    with pytest.raises(InvalidInputError, match="attn_mask"):
        SplitAttention.from_float(mha)(x, x, x, is_causal=True)
