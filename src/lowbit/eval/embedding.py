"""Sentence embeddings and how faithfully a quantized encoder reproduces them.

Embeddings are sentence-transformers' recipe for all-MiniLM-L6-v2: the encoder's last
hidden states, mean-pooled over the real (non-padding) tokens, then L2-normalised.

Fidelity of a candidate (quantized) encoder against the reference (fp32) over one corpus:
- cosine similarity of each text's two embeddings (mean and worst case);
- top-k retrieval agreement: every text is a query against the rest of the corpus; the
  share of the reference's k nearest neighbours (cosine) that the candidate also ranks in
  its k nearest, averaged over queries. It says whether search results would change.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.errors import InvalidInputError
from lowbit.progress import track

_PAD_VALUES = {"attention_mask": 0, "token_type_ids": 0}


def _padded_batch(tokenizer: Any, texts: Sequence[str], max_length: int) -> dict[str, Any]:
    """Tokenize and right-pad by hand, so tokenizers without a pad token (LLMs) work too;
    padded positions are masked out of attention and of the mean."""
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length)
    pad_id = getattr(tokenizer, "pad_token_id", None) or 0
    width = max(len(ids) for ids in encoded["input_ids"])
    batch = {}
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        if key not in encoded:
            continue
        pad = _PAD_VALUES.get(key, pad_id)
        batch[key] = torch.tensor([row + [pad] * (width - len(row)) for row in encoded[key]])
    if "attention_mask" not in batch:
        lengths = torch.tensor([len(row) for row in encoded["input_ids"]])
        batch["attention_mask"] = (torch.arange(width) < lengths[:, None]).long()
    return batch


def embed(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    batch_size: int = 32,
    max_length: int = 128,
) -> torch.Tensor:
    """Unit-length sentence embeddings: mean pooling over the attention mask + L2 norm.

    Args:
        model: an encoder returning hidden states ``(B, T, H)`` (``last_hidden_state``, a
            tuple's first item, or a tensor), called with the tokenizer's tensors.
        tokenizer: a transformers tokenizer.
        texts: the texts to embed.
        batch_size: texts per forward pass.
        max_length: tokens per text; longer texts are truncated.

    Returns:
        float32 tensor ``(len(texts), H)`` with rows of L2 norm 1.
    """
    if tokenizer is None:
        raise InvalidInputError("embedding texts needs a tokenizer; load a model with one")
    if len(texts) == 0 or batch_size < 1:
        raise InvalidInputError(
            f"need at least one text and batch_size >= 1 (got {len(texts)}, {batch_size})"
        )
    device = next(model.parameters(), torch.empty(0)).device
    starts = range(0, len(texts), batch_size)
    rows = []
    with torch.inference_mode():
        for start in track(starts, "embedding", total=len(starts)):
            batch = _padded_batch(tokenizer, texts[start : start + batch_size], max_length)
            batch = {k: v.to(device) for k, v in batch.items()}
            out = model(**batch)
            hidden = getattr(out, "last_hidden_state", out[0] if isinstance(out, tuple) else out)
            mask = batch["attention_mask"].unsqueeze(-1).to(torch.float32)
            summed = (hidden.float() * mask).sum(dim=1)
            rows.append(F.normalize(summed / mask.sum(dim=1).clamp(min=1), dim=-1).cpu())
    return torch.cat(rows)


def embedding_fidelity(
    reference_emb: torch.Tensor, candidate_emb: torch.Tensor, k: int = 10
) -> dict[str, float]:
    """How closely candidate embeddings match the reference ones, row by row.

    Args:
        reference_emb: ``(N, H)`` embeddings of N texts from the reference model.
        candidate_emb: ``(N, H)`` embeddings of the same texts, in the same order, from the
            candidate model.
        k: neighbours per query for retrieval agreement (N must exceed k).

    Returns:
        {"cosine_mean", "cosine_min", f"top{k}_agreement"}, each in [-1, 1] / [0, 1];
        identical embeddings give exactly 1.0 for all three.
    """
    if reference_emb.shape != candidate_emb.shape or reference_emb.dim() != 2:
        raise InvalidInputError(
            "reference and candidate embeddings must be (N, H) of the same shape (got "
            f"{tuple(reference_emb.shape)} and {tuple(candidate_emb.shape)}); embed the same "
            "texts with both models"
        )
    n = reference_emb.shape[0]
    if not 1 <= k < n:
        raise InvalidInputError(f"need 1 <= k < N texts (got k={k}, N={n}); embed more texts")
    ref = F.normalize(reference_emb.double(), dim=-1)
    cand = F.normalize(candidate_emb.double(), dim=-1)
    # cos = 1 − ‖a − b‖²/2 for unit vectors: exact (1.0) for identical rows, and more
    # accurate than a dot product in the regime that matters, cosines close to 1.
    cosine = 1 - (ref - cand).pow(2).sum(dim=-1) / 2
    agreement = _topk_neighbours(ref, k) & _topk_neighbours(cand, k)
    return {
        "cosine_mean": cosine.mean().item(),
        "cosine_min": cosine.min().item(),
        f"top{k}_agreement": agreement.sum().item() / (n * k),
    }


def _topk_neighbours(emb: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean ``(N, N)``: True where column j is among row i's k nearest (i itself excluded)."""
    sim = emb @ emb.T
    sim.fill_diagonal_(-torch.inf)
    idx = sim.topk(k, dim=1).indices
    return torch.zeros_like(sim, dtype=torch.bool).scatter_(1, idx, True)
