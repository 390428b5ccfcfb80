"""GPTQ inside a ggml block type's own grid: the bytes llama.cpp reads, values chosen by GPTQ.

Frantar, Ashkboos, Hoefler, Alistarh 2022, "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers" (arXiv:2210.17323), with the block parameters of a
GGUF type (lowbit.formats.blocks) in place of lowbit's affine groups:

1. Dead inputs, dampening and the inverse-Hessian Cholesky factor are those of
   :mod:`lowbit.algorithms.gptq` (``inverse_cholesky``: λ = damp · mean(diag H), raised
   when H + λI is not positive definite).
2. The columns are walked in the type's blocks (32 columns for q4_0/q5_0/q8_0/iq4_nl, 256
   for the k-quants). When a block's first column is reached, the codec chooses that
   block's parameters (scales, mins, sub-block scales) from the current, error-updated
   weights of the block's columns: ``codec.quantize(W[:, j:j+bs], importance)``, ggml's own
   search, so the parameters are what llama-quantize would write for those weights. With
   ``importance="hessian"`` the search is weighted by diag(H) on the block's columns, which
   is llama.cpp's imatrix up to a constant factor (the imatrix is mean x², diag(H) = 2/n Σ x²).
3. Each column is rounded to the nearest value of that grid (``BlockGrid.nearest``) and its
   error e = (w_j − q_j) / U_jj is subtracted from the later columns as e · U_j,j+1:, with
   lazy batch updates over whole blocks.
4. The codes are written back into the codec's bytes with the parameters kept
   (``with_codes``), so the output is valid blocks of the type and dequantizes to exactly the
   values GPTQ used when it measured its errors.
"""

from __future__ import annotations

import torch

from lowbit.algorithms.gptq import check_hessian, inverse_cholesky
from lowbit.algorithms.rtn import check_weight
from lowbit.errors import InvalidSpecError
from lowbit.formats.blocks import BlockCodec
from lowbit.formats.checks import check_finite

__all__ = ["BLOCK_IMPORTANCE", "gptq_blocks"]

BLOCK_IMPORTANCE = ("hessian", "none")  # what weights the codec's parameter search
_LAZY_COLUMNS = 256  # columns per lazy batch update (rounded to whole codec blocks)


def gptq_blocks(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    codec: BlockCodec,
    *,
    damp: float = 0.01,
    importance: str = "hessian",
) -> torch.Tensor:
    """Quantize a Linear weight with GPTQ into ``codec``'s blocks (module docstring).

    Args:
        weight: (N, K) float tensor (out_features, in_features); K a multiple of the codec's
            block size. Not modified.
        hessian: (K, K), 2/n·XᵀX of the layer's inputs (HessianObserver). Not modified.
        codec: the GGUF block type (``lowbit.formats.blocks.get_block_codec("q4_k")``).
        damp: dampening as a fraction of mean(diag H).
        importance: "hessian" (block parameters searched with diag(H) of the block's
            columns as ggml's imatrix weights) or "none" (ggml's unweighted search).

    Returns:
        uint8 (N, K // block_size * type_size): ggml's bytes of the type, row by row.
    """
    check_weight(weight)
    n, k = weight.shape
    codec.nbytes((n, k))  # refuses a row length that is not whole blocks
    check_hessian(hessian, k)
    if importance not in BLOCK_IMPORTANCE:
        raise InvalidSpecError(
            f"importance must be one of {', '.join(BLOCK_IMPORTANCE)}, got {importance!r}"
        )
    w = weight.detach().to(torch.float32, copy=True)
    check_finite(w, what="weight")
    h = hessian.detach().to(dtype=torch.promote_types(hessian.dtype, torch.float32), copy=True)
    dead = torch.diagonal(h) == 0
    torch.diagonal(h)[dead] = 1.0
    w[:, dead] = 0.0
    imp = torch.diagonal(h).to(torch.float32).clone() if importance == "hessian" else None
    hinv = inverse_cholesky(h, damp).to(torch.float32)
    del h

    bs, ts = codec.block_size, codec.type_size
    lazy = bs * max(1, _LAZY_COLUMNS // bs)
    out = torch.empty(n, k // bs, ts, dtype=torch.uint8)
    for i1 in range(0, k, lazy):
        i2 = min(i1 + lazy, k)
        w1 = w[:, i1:i2]  # a view: updates inside the batch land in w
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        for j in range(0, i2 - i1, bs):
            cols = slice(i1 + j, i1 + j + bs)
            raw = codec.quantize(w1[:, j : j + bs], None if imp is None else imp[cols])
            raw = raw.view(n, 1, ts)
            grid = codec.grid(raw)
            codes = torch.empty(n, 1, bs, dtype=torch.int32)
            for c in range(bs):
                i = j + c
                g = grid.sliced(slice(c, c + 1))
                col = w1[:, i : i + 1].view(n, 1, 1)
                q = g.nearest(col)
                codes[:, :, c : c + 1] = q
                e = (col - g.values(q)).view(n, 1) / hinv1[i, i]
                w1[:, i:] -= e @ hinv1[i : i + 1, i:]
                err1[:, i : i + 1] = e
            out[:, (i1 + j) // bs] = codec.with_codes(raw, codes).view(n, ts)
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return out.reshape(n, -1)
