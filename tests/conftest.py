"""Shared test fixtures: deterministic seeds and the golden vectors folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from hypothesis import settings

# CI runs the property tests with a fixed sequence of examples, so a landing never depends
# on luck; locally hypothesis explores new examples on every run.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

GOLDEN = Path(__file__).parent / "golden"


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def load_golden(name: str) -> dict:
    """A committed golden-vector file (each carries its provenance)."""
    return json.loads((GOLDEN / name).read_text())


def tiny_llama(**overrides):
    """A small random LlamaForCausalLM (seeded, eval mode) for fast transformer tests;
    keyword arguments override LlamaConfig fields."""
    import transformers

    fields = dict(
        vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    fields.update(overrides)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**fields)).eval()
