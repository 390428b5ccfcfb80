"""Sentence embeddings of the real all-MiniLM-L6-v2 and the fidelity metrics."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
import transformers  # noqa: F401  (the hf extra; make test installs it)

from lowbit.errors import InvalidInputError
from lowbit.eval.bundled import minilm_path
from lowbit.eval.embedding import embed, embedding_fidelity
from lowbit.eval.text import evaluation_text, text_chunks
from lowbit.io.hf import LoadedModel, load_model


@pytest.fixture(scope="module")
def minilm() -> LoadedModel:
    return load_model(minilm_path())


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return text_chunks(evaluation_text(), 48, words=32)


@pytest.fixture(scope="module")
def reference(minilm, texts) -> torch.Tensor:
    return embed(minilm.model, minilm.tokenizer, texts, batch_size=16)


def test_embeddings_are_mean_pooled_and_unit_length(minilm, texts, reference) -> None:
    assert reference.shape == (len(texts), 384)
    assert reference.dtype == torch.float32
    assert torch.allclose(reference.norm(dim=1), torch.ones(len(texts)), atol=1e-6)
    # By hand for one text, no padding involved: mean over its tokens, then normalise.
    enc = minilm.tokenizer([texts[5]], return_tensors="pt", truncation=True, max_length=128)
    with torch.no_grad():
        hidden = minilm.model(**enc).last_hidden_state[0]
    expected = F.normalize(hidden.mean(dim=0), dim=0)
    assert torch.allclose(reference[5], expected, atol=1e-5)


def test_padding_does_not_change_embeddings(minilm, texts, reference) -> None:
    # Batches of different sizes pad the same text to different widths.
    other = embed(minilm.model, minilm.tokenizer, [texts[0], "short", *texts[1:4]], batch_size=5)
    assert torch.allclose(other[[0, 2, 3, 4]], reference[:4], atol=1e-5)


def test_fidelity_of_the_model_with_itself_is_exactly_one(minilm, texts, reference) -> None:
    again = embed(minilm.model, minilm.tokenizer, texts, batch_size=16)
    assert torch.equal(again, reference)  # deterministic
    assert embedding_fidelity(reference, again) == {
        "cosine_mean": 1.0,
        "cosine_min": 1.0,
        "top10_agreement": 1.0,
    }


def test_noisy_weights_lower_the_fidelity(minilm, texts, reference) -> None:
    noisy = copy.deepcopy(minilm.model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in noisy.modules():
            if isinstance(module, torch.nn.Linear):
                w = module.weight
                w += 0.1 * w.std() * torch.randn(w.shape, generator=generator)
    candidate = embed(noisy, minilm.tokenizer, texts, batch_size=16)
    fidelity = embedding_fidelity(reference, candidate)
    assert 0.5 < fidelity["cosine_min"] <= fidelity["cosine_mean"] < 0.9999
    assert 0.0 <= fidelity["top10_agreement"] < 1.0


def test_fidelity_by_hand_on_a_rotation() -> None:
    # Rotating every embedding by the same angle keeps all pairwise similarities (the same
    # neighbours) and makes each cosine exactly cos(angle).
    emb = F.normalize(torch.randn(30, 2, dtype=torch.float64), dim=1)
    angle = 0.3
    rotation = torch.tensor(
        [[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]],
        dtype=torch.float64,
    )
    fidelity = embedding_fidelity(emb, emb @ rotation.T, k=5)
    assert fidelity["cosine_mean"] == pytest.approx(math.cos(angle), abs=1e-12)
    assert fidelity["cosine_min"] == pytest.approx(math.cos(angle), abs=1e-12)
    assert fidelity["top5_agreement"] == 1.0


def test_topk_agreement_counts_shared_neighbours() -> None:
    # Unit vectors at angles (0, 1, 2.5, 10) / 20; the candidate moves the last one to
    # 0.4 / 20. Nearest neighbour, reference: 0->1, 1->0, 2->1, 3->2; candidate: 0->3,
    # 1->3, 2->1, 3->0. Only query 2 keeps its neighbour.
    angles = torch.tensor([0.0, 1.0, 2.5, 10.0]) / 20
    ref = torch.stack([angles.cos(), angles.sin()], dim=1)
    cand_angles = torch.tensor([0.0, 1.0, 2.5, 0.4]) / 20
    cand = torch.stack([cand_angles.cos(), cand_angles.sin()], dim=1)
    fidelity = embedding_fidelity(ref, cand, k=1)
    assert fidelity["top1_agreement"] == pytest.approx(1 / 4)


def test_fidelity_rejects_mismatched_inputs() -> None:
    a = torch.randn(20, 8)
    with pytest.raises(InvalidInputError, match="same shape"):
        embedding_fidelity(a, a[:19])
    with pytest.raises(InvalidInputError, match="k < N"):
        embedding_fidelity(a, a, k=20)


def test_embed_rejects_missing_tokenizer_and_empty_input(minilm) -> None:
    with pytest.raises(InvalidInputError, match="tokenizer"):
        embed(minilm.model, None, ["text"])
    with pytest.raises(InvalidInputError, match="at least one text"):
        embed(minilm.model, minilm.tokenizer, [])
