"""Synthetic llama folders of any size, written one block at a time (random weights, never
the whole model in memory): the larger-than-RAM tests and benchmark quantize them."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def synthetic_llama_folder(
    folder: Path,
    *,
    hidden: int,
    intermediate: int,
    layers: int,
    vocab: int = 32000,
    heads: int = 16,
    kv_heads: int = 4,
    dtype: torch.dtype = torch.bfloat16,
    seed: int = 0,
) -> Path:
    """A LlamaForCausalLM folder (config.json, one safetensors shard per block plus one for
    the rest, the index, the 289-token tiny tokenizer) with N(0, 0.02) weights."""
    import safetensors.torch
    import transformers

    from lowbit_testkit.models import tiny_tokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    head_dim = hidden // heads
    config = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=4096, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
        dtype=str(dtype).removeprefix("torch."),
    )  # fmt: skip
    config.architectures = ["LlamaForCausalLM"]
    config.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    g = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return (torch.randn(shape, generator=g) * 0.02).to(dtype)

    shapes = {
        "self_attn.q_proj.weight": (heads * head_dim, hidden),
        "self_attn.k_proj.weight": (kv_heads * head_dim, hidden),
        "self_attn.v_proj.weight": (kv_heads * head_dim, hidden),
        "self_attn.o_proj.weight": (hidden, heads * head_dim),
        "mlp.gate_proj.weight": (intermediate, hidden),
        "mlp.up_proj.weight": (intermediate, hidden),
        "mlp.down_proj.weight": (hidden, intermediate),
    }
    weight_map: dict[str, str] = {}
    total = layers + 1
    for i in range(total):
        name = f"model-{i + 1:05d}-of-{total:05d}.safetensors"
        if i < layers:
            p = f"model.layers.{i}."
            tensors = {p + k: randn(*shape) for k, shape in shapes.items()}
            tensors[p + "input_layernorm.weight"] = torch.ones(hidden, dtype=dtype)
            tensors[p + "post_attention_layernorm.weight"] = torch.ones(hidden, dtype=dtype)
        else:
            tensors = {
                "model.embed_tokens.weight": randn(vocab, hidden),
                "model.norm.weight": torch.ones(hidden, dtype=dtype),
                "lm_head.weight": randn(vocab, hidden),
            }
        safetensors.torch.save_file(tensors, str(folder / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, name))
        del tensors
    index = {"metadata": {}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return folder
