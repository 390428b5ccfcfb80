"""Small seeded models for fast tests."""

from __future__ import annotations

import torch


def calibrates_blocks(preset: str) -> bool:
    """Whether ``preset`` quantizes block by block (GPTQ, AWQ, SmoothQuant, input
    transforms): it needs a model with a list of transformer blocks."""
    from lowbit.recipes import get_recipe

    spec = get_recipe(preset).spec
    return spec is not None and spec.algorithm != "rtn"


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


def tiny_bert(**overrides):
    """A small random BertModel (post-LN encoder; seeded, eval mode); keyword arguments
    override BertConfig fields."""
    import transformers

    fields = dict(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=64,
    )  # fmt: skip
    fields.update(overrides)
    torch.manual_seed(0)
    return transformers.BertModel(transformers.BertConfig(**fields)).eval()


def tiny_llama_folder(folder, **overrides):
    """A tiny llama Hugging Face folder with a Llama-2-style tokenizer.json (BPE with byte
    fallback, "▁" for spaces; no tokenizer.model) and llama3 RoPE scaling: the converter's
    LlamaHfVocab and rope_freqs branches, which SmolLM2 does not take. Keyword arguments
    override LlamaConfig fields."""
    tokenizer = tiny_tokenizer()
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 32}  # fmt: skip
    model = tiny_llama(**{"vocab_size": len(tokenizer), "bos_token_id": 1, "eos_token_id": 2,
                          "rope_parameters": rope, **overrides})  # fmt: skip
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_tokenizer():
    """A Llama-2-style tokenizer of 289 tokens: BPE with byte fallback, "▁" for spaces."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{i:02X}>": 3 + i for i in range(256)}}
    merges = [("▁", "t"), ("h", "e"), ("▁t", "he")]
    for piece in [*"abcdefghijklmnopqrstuvwxyz▁", *(a + b for a, b in merges)]:
        vocab[piece] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])  # fmt: skip
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                        unk_token="<unk>")  # fmt: skip
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    return tokenizer
