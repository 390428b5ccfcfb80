"""Strided sliding-window perplexity: against hand-computed NLLs on a tiny random Llama,
window bookkeeping, errors; and one slow check on the real SmolLM2-135M."""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F

from lowbit.errors import InvalidInputError
from lowbit.eval.perplexity import PerplexityResult, llama_cpp_perplexity, perplexity
from lowbit.eval.text import evaluation_text
from lowbit_testkit.models import tiny_llama as make_tiny_llama

VOCAB = 64


@pytest.fixture(scope="module")
def tiny_llama() -> torch.nn.Module:
    return make_tiny_llama(vocab_size=VOCAB, num_attention_heads=2, max_position_embeddings=256)


@pytest.fixture
def ids() -> torch.Tensor:
    return torch.randint(0, VOCAB, (200,), generator=torch.Generator().manual_seed(1))


def _nll(model: torch.nn.Module, context: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """NLLs (float64) of ``target`` tokens, each predicted after ``context`` and the targets
    before it, by one forward pass."""
    seq = torch.cat([context, target])
    with torch.no_grad():
        logits = model(seq.unsqueeze(0)).logits[0].double()
    return F.cross_entropy(logits[len(context) - 1 : -1], target, reduction="none")


def test_single_window_equals_cross_entropy_by_hand(tiny_llama, ids) -> None:
    result = perplexity(tiny_llama, ids, ctx=256, stride=256)
    expected = _nll(tiny_llama, ids[:1], ids[1:])
    assert result.n_tokens == len(ids) - 1
    assert result.nll == pytest.approx(expected.mean().item(), rel=1e-5)
    assert result.ppl == pytest.approx(math.exp(result.nll), rel=1e-12)


def test_non_overlapping_windows_skip_each_windows_first_token(tiny_llama, ids) -> None:
    ctx = 64
    result = perplexity(tiny_llama, ids, ctx=ctx, stride=ctx)
    windows = [ids[i : i + ctx] for i in range(0, len(ids), ctx)]  # 64, 64, 64, 8
    expected = torch.cat([_nll(tiny_llama, w[:1], w[1:]) for w in windows])
    assert result.n_tokens == len(ids) - len(windows)
    assert result.nll == pytest.approx(expected.mean().item(), rel=1e-5)


@pytest.mark.parametrize("bos_id", [None, 7])
def test_llama_cpp_scoring_is_the_second_half_of_whole_chunks(tiny_llama, ids, bos_id) -> None:
    ctx = 64  # 200 tokens: 3 whole chunks, the last 8 tokens dropped as llama-perplexity does
    result = llama_cpp_perplexity(tiny_llama, ids, ctx=ctx, bos_id=bos_id)
    nlls = []
    for c in range(3):
        chunk = ids[c * ctx : (c + 1) * ctx].clone()
        if bos_id is not None:
            chunk[0] = bos_id
        nlls.append(_nll(tiny_llama, chunk[: ctx // 2 + 1], chunk[ctx // 2 + 1 :]))
    expected = torch.cat(nlls)
    assert result.n_tokens == 3 * (ctx - 1 - ctx // 2) == len(expected)
    assert result.nll == pytest.approx(expected.mean().item(), rel=1e-5)
    with pytest.raises(InvalidInputError, match="fewer than one chunk"):
        llama_cpp_perplexity(tiny_llama, ids[:63], ctx=ctx)


def test_stride_one_scores_every_token_with_the_longest_context(tiny_llama, ids) -> None:
    ids = ids[:40]
    ctx = 16
    result = perplexity(tiny_llama, ids, ctx=ctx, stride=1)
    # Tokens 1..ctx-1 are scored in the first window; token p >= ctx sees ctx-1 tokens.
    expected = [_nll(tiny_llama, ids[:1], ids[1:ctx])]
    expected += [_nll(tiny_llama, ids[p - ctx + 1 : p], ids[p : p + 1]) for p in range(ctx, 40)]
    assert result.n_tokens == len(ids) - 1
    assert result.nll == pytest.approx(torch.cat(expected).mean().item(), rel=1e-5)


@pytest.mark.parametrize("stride", [17, 50, 63])
def test_overlapping_windows_score_every_token_once(tiny_llama, ids, stride) -> None:
    result = perplexity(tiny_llama, ids, ctx=64, stride=stride)
    assert result.n_tokens == len(ids) - 1
    assert math.isfinite(result.ppl)


def test_deterministic_and_max_tokens(tiny_llama, ids) -> None:
    a = perplexity(tiny_llama, ids, ctx=64, stride=32)
    b = perplexity(tiny_llama, ids.tolist(), ctx=64, stride=32)
    assert a == b
    short = perplexity(tiny_llama, ids, ctx=64, stride=32, max_tokens=100)
    assert short == perplexity(tiny_llama, ids[:100], ctx=64, stride=32)
    assert short.n_tokens == 99


class _CharTokenizer:
    """A stand-in tokenizer with the transformers call convention: characters -> ids."""

    def __call__(self, text: str, verbose: bool = True) -> dict[str, list[int]]:
        return {"input_ids": [ord(c) % VOCAB for c in text]}


def test_tokenizer_and_text_match_token_ids(tiny_llama) -> None:
    text = "the quick brown fox jumps over the lazy dog " * 3
    ids = _CharTokenizer()(text)["input_ids"]
    assert perplexity(tiny_llama, _CharTokenizer(), text, ctx=32, stride=16) == perplexity(
        tiny_llama, ids, ctx=32, stride=16
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ctx": 64, "stride": 65}, "stride <= ctx"),
        ({"ctx": 64, "stride": 0}, "stride <= ctx"),
        ({"ctx": 512, "stride": 512}, "256 positions"),
        ({"max_tokens": 1}, "at least 2"),
    ],
)
def test_bad_windows_are_rejected(tiny_llama, ids, kwargs, match) -> None:
    kwargs = {"ctx": 64, "stride": 64, **kwargs}
    with pytest.raises(InvalidInputError, match=match):
        perplexity(tiny_llama, ids, **kwargs)


def test_bad_inputs_are_rejected(tiny_llama, ids) -> None:
    with pytest.raises(InvalidInputError, match="at least 2"):
        perplexity(tiny_llama, ids[:1], ctx=64, stride=64)
    with pytest.raises(InvalidInputError, match="no tokenizer"):
        perplexity(tiny_llama, None, "some text", ctx=64, stride=64)
    with pytest.raises(InvalidInputError, match="needs the text"):
        perplexity(tiny_llama, _CharTokenizer(), ctx=64, stride=64)
    with pytest.raises(InvalidInputError, match="1-D"):
        perplexity(tiny_llama, ids.reshape(2, -1), ctx=64, stride=64)


@pytest.mark.slow
def test_smollm2_perplexity_on_the_evaluation_text() -> None:
    from lowbit.eval.bundled import smollm2_gguf_path
    from lowbit.io.hf import load_model

    loaded = load_model(smollm2_gguf_path())
    assert loaded.kind == "causal-lm"
    text = evaluation_text()
    strided = perplexity(loaded.model, loaded.tokenizer, text, ctx=256, stride=128, max_tokens=512)
    plain = perplexity(loaded.model, loaded.tokenizer, text, ctx=256, stride=256, max_tokens=512)
    assert isinstance(strided, PerplexityResult)
    assert strided.n_tokens == 511
    # A real LM on English prose: far better than uniform over 49k tokens; more context
    # (overlapping windows) does not hurt.
    assert 2 < strided.ppl < 60
    assert strided.ppl <= plain.ppl * 1.02
    # Word order carries information: the same tokens shuffled are much less likely.
    ids = loaded.tokenizer(text, verbose=False)["input_ids"][:512]
    random.Random(0).shuffle(ids)
    shuffled = perplexity(loaded.model, ids, ctx=256, stride=256)
    assert shuffled.ppl > 3 * plain.ppl
