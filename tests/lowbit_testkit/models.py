"""Small seeded models for fast tests."""

from __future__ import annotations

import torch


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
