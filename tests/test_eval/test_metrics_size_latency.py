"""accuracy, SQNR, model bytes and interleaved timing."""

from __future__ import annotations

import torch
from torch import nn

import lowbit.formats
from lowbit.eval import accuracy, model_nbytes, sqnr_db, time_interleaved
from lowbit.eval.latency import median_ratio
from lowbit.recipes import quantize


def test_accuracy_by_hand_and_sqnr_is_the_formats_one() -> None:
    model = nn.Identity()
    x = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    assert accuracy(model, x, torch.tensor([0, 1, 1, 1]), batch_size=3) == 75.0
    assert sqnr_db is lowbit.formats.sqnr_db  # tested in tests/test_formats/test_sqnr.py


def test_model_nbytes_counts_stored_tensors() -> None:
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8))
    assert model_nbytes(model) == 4 * (64 * 32 + 32 + 32 * 8 + 8)
    q = quantize(model, "w8a16")
    # int8 codes + float32 per-channel scales + float32 biases
    assert model_nbytes(q) == (64 * 32 + 32 * 8) + 4 * (32 + 8) + 4 * (32 + 8)


def test_time_interleaved_and_ratio() -> None:
    calls = []
    samples = time_interleaved(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
        warmup=1,
        repeats=3,
        threads=1,
    )
    assert calls == ["a", "b"] * 4 and all(len(v) == 3 for v in samples.values())
    med, lo, hi = median_ratio([2.0, 4.0, 6.0], [1.0, 1.0, 2.0])
    assert (med, lo, hi) == (3.0, 2.0, 4.0)


def test_model_nbytes_counts_a_tied_table_once() -> None:
    from lowbit_testkit.models import tiny_llama

    model = tiny_llama(tie_word_embeddings=True)
    assert model_nbytes(model) == sum(p.numel() * 4 for p in model.parameters())  # ties once
    tied = quantize(model, "w8a16")  # the table int8 per row, the head on the same codes
    untied = quantize(tiny_llama(tie_word_embeddings=False), "w8a16")
    table = 96 * 32 + 96 * 4  # int8 codes + a float32 scale per row
    assert tied.lm_head.weight.nbytes == untied.lm_head.weight.nbytes == table
    assert model_nbytes(untied) - model_nbytes(tied) == table
