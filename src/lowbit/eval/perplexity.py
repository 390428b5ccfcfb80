"""Perplexity of a causal language model over a text, with a sliding window.

The recipe of Hugging Face's "Perplexity of fixed-length models" guide: the token sequence
is cut into windows of ``ctx`` tokens that start every ``stride`` tokens; each window scores
only the tokens the previous window did not score (the overlapping prefix is context only,
its labels are "-100"). With stride == ctx the windows do not overlap and the first token of
every window is predicted from nothing, so it is not scored; with stride < ctx every token
after the first is scored exactly once, each with at least ctx − stride tokens of context.

    ppl = exp(nll),  nll = −(1/N) Σ log p(t_i | t_{<i} inside its window)

The log-likelihoods are computed here from the logits (log-softmax in float32, sums in
float64), so any module that returns logits works, not only models that accept ``labels``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lowbit.errors import InvalidInputError
from lowbit.progress import track


@dataclass(frozen=True)
class PerplexityResult:
    """Perplexity of a model over a text.

    Attributes:
        ppl: exp(nll).
        n_tokens: number of tokens scored.
        nll: mean negative log-likelihood per scored token, in nats.
    """

    ppl: float
    n_tokens: int
    nll: float


def _token_ids(tokens: Any, text: str | None) -> torch.Tensor:
    if isinstance(tokens, torch.Tensor) or (
        isinstance(tokens, Sequence) and not isinstance(tokens, str)
    ):
        if text is not None:
            raise InvalidInputError("pass either token ids or a tokenizer with text, not both")
        ids = torch.as_tensor(tokens, dtype=torch.long)
    elif tokens is None:
        raise InvalidInputError(
            "the model has no tokenizer; pass token ids, or load a model folder with tokenizer "
            "files"
        )
    else:
        if text is None:
            raise InvalidInputError("a tokenizer needs the text to score: pass text=...")
        # verbose=False: a long text is longer than model_max_length on purpose (windows).
        ids = torch.as_tensor(tokens(text, verbose=False)["input_ids"], dtype=torch.long)
    if ids.dim() != 1:
        raise InvalidInputError(
            f"token ids must be one sequence (1-D), got shape {tuple(ids.shape)}"
        )
    return ids


def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    out = model(ids)
    logits = getattr(out, "logits", out[0] if isinstance(out, tuple) else out)
    return logits[0]


def _check_window(model: nn.Module, ctx: int, stride: int) -> None:
    if ctx < 2 or not 1 <= stride <= ctx:
        raise InvalidInputError(
            f"need ctx >= 2 and 1 <= stride <= ctx (got ctx={ctx}, stride={stride}); a stride "
            "larger than the context would skip tokens"
        )
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(limit, int) and ctx > limit:
        raise InvalidInputError(
            f"ctx={ctx} is longer than the model's {limit} positions; pass ctx <= {limit}"
        )


def perplexity(
    model: nn.Module,
    tokens: Any,
    text: str | None = None,
    *,
    ctx: int = 512,
    stride: int = 512,
    max_tokens: int | None = None,
) -> PerplexityResult:
    """Perplexity of a causal LM over ``text`` (or over token ids), strided sliding window.

    Args:
        model: a causal LM taking ``(1, T)`` token ids and returning logits ``(1, T, vocab)``
            (a transformers model's ``.logits``, a tuple's first item, or a tensor).
        tokens: a tokenizer (called as ``tokenizer(text)["input_ids"]``, special tokens as
            the tokenizer adds them), or the token ids themselves (1-D tensor or list).
        text: the text to score when ``tokens`` is a tokenizer.
        ctx: tokens per window (at most the model's max_position_embeddings).
        stride: tokens between window starts, 1..ctx; smaller gives every scored token more
            context (lower, more faithful perplexity) at ctx/stride times the compute.
        max_tokens: use only the first this many tokens (for quick measurements).

    Returns:
        PerplexityResult(ppl, n_tokens, nll).
    """
    _check_window(model, ctx, stride)
    ids = _token_ids(tokens, text)
    if max_tokens is not None:
        if max_tokens < 2:
            raise InvalidInputError(f"max_tokens must be at least 2 (got {max_tokens})")
        ids = ids[:max_tokens]
    n = len(ids)
    if n < 2:
        raise InvalidInputError(
            f"the text has {n} token(s); perplexity needs at least 2: pass a longer text"
        )
    device = next(model.parameters(), torch.empty(0)).device
    ids = ids.to(device)
    starts = []
    for begin in range(0, n, stride):
        starts.append(begin)
        if begin + ctx >= n:
            break
    nll_sum = 0.0
    n_scored = 0
    scored_until = 0  # tokens before this position are scored already (or never can be)
    with torch.inference_mode():
        for begin in track(starts, "perplexity", total=len(starts)):
            end = min(begin + ctx, n)
            window = ids[begin:end]
            first = max(scored_until, begin + 1)  # first target position in this window
            logits = _logits(model, window.unsqueeze(0)).float()
            # Logits at position p predict token p + 1.
            pred = logits[first - begin - 1 : end - begin - 1]
            targets = ids[first:end]
            logp = torch.log_softmax(pred, dim=-1).gather(1, targets.unsqueeze(1))
            nll_sum -= logp.double().sum().item()
            n_scored += end - first
            scored_until = end
    nll = nll_sum / n_scored
    return PerplexityResult(ppl=math.exp(nll), n_tokens=n_scored, nll=nll)


def llama_cpp_perplexity(
    model: nn.Module,
    tokens: Any,
    text: str | None = None,
    *,
    ctx: int = 512,
    max_tokens: int | None = None,
    bos_id: int | None = None,
) -> PerplexityResult:
    """Perplexity as llama.cpp's llama-perplexity computes it, to compare figures with it.

    llama.cpp 0c1e570 tools/perplexity/perplexity.cpp (perplexity()): the tokens are cut into
    whole chunks of ``ctx`` (a partial last chunk is dropped); the first token of each chunk
    is replaced by BOS when the vocabulary adds one (``bos_id``); only the second half of
    each chunk is scored (targets ctx/2 + 1 .. ctx - 1, each with at least ctx/2 tokens of
    context). ``max_tokens`` limits the tokens used, e.g. chunks * ctx for ``--chunks``.
    """
    _check_window(model, ctx, ctx)
    ids = _token_ids(tokens, text)
    if max_tokens is not None:
        ids = ids[:max_tokens]
    n_chunks = len(ids) // ctx
    if n_chunks < 1:
        raise InvalidInputError(
            f"the text has {len(ids)} tokens, fewer than one chunk of {ctx}: pass a longer "
            "text or a smaller ctx"
        )
    first = ctx // 2
    device = next(model.parameters(), torch.empty(0)).device
    nll_sum, n_scored = 0.0, 0
    with torch.inference_mode():
        for chunk in track(range(n_chunks), "perplexity (llama.cpp)", total=n_chunks):
            window = ids[chunk * ctx : (chunk + 1) * ctx].clone()
            if bos_id is not None:
                window[0] = bos_id
            logits = _logits(model, window.unsqueeze(0).to(device)).float()
            pred = logits[first : ctx - 1]
            targets = window[first + 1 :].to(device)
            logp = torch.log_softmax(pred, dim=-1).gather(1, targets.unsqueeze(1))
            nll_sum -= logp.double().sum().item()
            n_scored += ctx - 1 - first
    nll = nll_sum / n_scored
    return PerplexityResult(ppl=math.exp(nll), n_tokens=n_scored, nll=nll)
