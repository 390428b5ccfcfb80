"""GPTQ inside a ggml block type's own grid: the bytes llama.cpp reads, values chosen by GPTQ.

Frantar, Ashkboos, Hoefler, Alistarh 2022, "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers" (arXiv:2210.17323), with the block parameters of a
GGUF type (lowbit.formats.blocks) in place of lowbit's affine groups:

1. Dead inputs, dampening and the inverse-Hessian Cholesky factor are those of
   :mod:`lowbit.algorithms.gptq` (``inverse_cholesky``: λ = damp · mean(diag H), raised
   when H + λI is not positive definite).
2. Every block's parameters (scales, mins, sub-block scales) are chosen once, before any
   column is rounded, by ggml's own search on the original weights:
   ``codec.quantize(W, importance)``, so they are what llama-quantize writes for this tensor.
   With ``importance="hessian"`` the search is weighted by diag(H), which is llama.cpp's
   imatrix up to a constant factor (the imatrix is mean x², diag(H) = 2/n Σ x²). These are
   GPTQ's "static groups" (the reference code's ``--static-groups``): the grids are fixed,
   so the columns can be walked in any order.
3. The columns are walked in decreasing diag(H) ("act order", the reference code's
   ``--act-order``): the columns with the largest inputs are rounded first, while the most
   columns are left to absorb their error. On SmolLM2 at q4_0 this is what makes GPTQ beat
   llama.cpp's imatrix file; in the natural order it does not (docs/benchmarks.md).
   Each column is rounded to the nearest value of its block's grid (``BlockGrid.nearest``)
   and its error e = (w_j − q_j) / U_jj is subtracted from the later columns as e · U_j,j+1:,
   with lazy batch updates.
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
_LAZY_COLUMNS = 128  # columns per lazy batch update


def gptq_blocks(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    codec: BlockCodec,
    *,
    damp: float = 0.01,
    importance: str = "hessian",
    act_order: bool = True,
) -> torch.Tensor:
    """Quantize a Linear weight with GPTQ into ``codec``'s blocks (module docstring).

    Args:
        weight: (N, K) float tensor (out_features, in_features); K a multiple of the codec's
            block size. Not modified.
        hessian: (K, K), 2/n·XᵀX of the layer's inputs (HessianObserver). Not modified.
        codec: the GGUF block type (``lowbit.formats.blocks.get_block_codec("q4_k")``).
        damp: dampening as a fraction of mean(diag H).
        importance: "hessian" (block parameters searched with diag(H) as ggml's imatrix
            weights) or "none" (ggml's unweighted search).
        act_order: walk the columns in decreasing diag(H) (True) or in their own order.

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
    diag = torch.diagonal(h).to(torch.float32).clone()
    raw = codec.quantize(w, diag if importance == "hessian" else None)
    raw = raw.view(n, k // codec.block_size, codec.type_size)
    grid = codec.grid(raw)
    order = torch.argsort(diag, descending=True, stable=True) if act_order else torch.arange(k)

    # Column-major from here: column j of the weight is row j of wt, a contiguous slice.
    # The column loop is the hot path (one pass per input feature): it applies
    # BlockGrid.nearest's rounding (divisor, midpoints) and .values, computed once outside.
    def columns(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(n, k)[:, order].t().contiguous()

    scale, offset, divisor = columns(grid.scale), columns(grid.offset), columns(grid.divisor())
    mid = grid.midpoints()
    wt = w[:, order].t().contiguous()
    hinv = inverse_cholesky(h[order][:, order], damp).to(torch.float32)
    del h

    levels = torch.empty(k, n, dtype=torch.int64)  # index into grid.levels
    for i1 in range(0, k, _LAZY_COLUMNS):
        i2 = min(i1 + _LAZY_COLUMNS, k)
        w1 = wt[i1:i2]  # a view: updates inside the batch land in wt
        err1 = torch.empty_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            j = i1 + i
            u = torch.sub(w1[i], offset[j], out=err1[i]).div_(divisor[j])
            idx = torch.searchsorted(mid, u, right=True, out=levels[j])
            value = torch.addcmul(offset[j], scale[j], grid.levels[idx])
            e = torch.sub(w1[i], value, out=err1[i]).div_(hinv1[i, i])
            w1[i:] -= torch.outer(hinv1[i, i:], e)
        wt[i2:] -= hinv[i1:i2, i2:].t() @ err1
    codes = (levels.t() + grid.code_min).to(torch.int32)
    codes = codes[:, torch.argsort(order)].view(n, -1, codec.block_size)
    return codec.with_codes(raw, codes).reshape(n, -1)
