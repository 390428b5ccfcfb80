"""Tokenizer metadata of a Hugging Face folder, as llama.cpp's converter writes it
(conversion/base.py and conversion/{llama,bert}.py at llama.cpp 0c1e570): the vocabulary,
token types, merges, special token ids, add_bos/add_eos flags and chat template.

Token lists come from transformers' AutoTokenizer as in the converter's ``get_vocab_base``;
special tokens, merges and the chat template from gguf-py's ``SpecialVocab`` and
``LlamaHfVocab`` (the converter's own helpers), so nothing here re-reads tokenizer files.
"""

from __future__ import annotations

import json
import logging
from hashlib import sha256
from pathlib import Path
from typing import Any

from lowbit.errors import UnsupportedFormatError, require
from lowbit.io.gguf.pre_tokenizers import CHKTXT, PRE_TOKENIZERS

logger = logging.getLogger(__name__)


def _looks_special(token: str) -> bool:
    """The converter's ``does_token_look_special``: added tokens some models forget to mark."""
    return (
        token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
        or (token.startswith("<|") and token.endswith("|>"))
        or (token.startswith("<｜") and token.endswith("｜>"))
        or (token.startswith("<unused") and token.endswith(">"))
    )


def pre_tokenizer(tokenizer: Any, folder: Path) -> str:
    """``tokenizer.ggml.pre``: the converter's ``get_vocab_base_pre`` (the sha256 of the token
    ids of CHKTXT looked up in its table)."""
    chkhsh = sha256(str(tokenizer.encode(CHKTXT)).encode()).hexdigest()
    name = PRE_TOKENIZERS.get(chkhsh)
    if name is None:
        raise UnsupportedFormatError(
            f"{folder}: llama.cpp 0c1e570's converter does not know this tokenizer's "
            f"pre-tokenizer (hash {chkhsh}); llama.cpp could not run it either. Use a model "
            "whose tokenizer llama.cpp supports"
        )
    return name


def vocab_base(folder: Path, hparams: dict[str, Any]) -> tuple[list[str], list[int], str]:
    """Tokens, token types and pre-tokenizer name of a GPT-2 BPE or WordPiece tokenizer: the
    converter's ``get_vocab_base`` (ids without a token become ``[PAD{i}]``, UNUSED)."""
    transformers = require("transformers", "hf")
    gguf = require("gguf", "gguf")
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    vocab = tokenizer.vocab
    vocab_size = hparams.get("vocab_size", len(vocab))
    if max(vocab.values()) >= vocab_size:
        raise UnsupportedFormatError(
            f"{folder}: the tokenizer has ids beyond config.json's vocab_size {vocab_size}; "
            "fix vocab_size in config.json"
        )
    tokpre = pre_tokenizer(tokenizer, folder)
    reverse = {i: tok for tok, i in vocab.items()}
    added = tokenizer.get_added_vocab()
    decoder = tokenizer.added_tokens_decoder
    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        token = reverse[i]
        if token not in added:
            types.append(gguf.TokenType.NORMAL)
        else:
            # llama.cpp assumes CONTROL and USER_DEFINED tokens are pre-normalized
            if not decoder[i].normalized:
                token = tokenizer.decode(tokenizer.encode(token, add_special_tokens=False))
            if decoder[i].special or _looks_special(token):
                types.append(gguf.TokenType.CONTROL)
            else:
                token = token.replace("\u2581", " ")  # pre-normalize user-defined spaces
                types.append(gguf.TokenType.USER_DEFINED)
        tokens.append(token)
    return tokens, types, tokpre


def _normalizer_flags(normalizer: dict[str, Any], flags: dict[str, bool]) -> None:
    """SpecialVocab._parse_normalizer of the pinned gguf-py: lowercase / strip_accents flags of
    a tokenizer.json normalizer (standalone, BertNormalizer attributes or in a Sequence)."""
    kind = normalizer.get("type")
    if kind == "Lowercase":
        flags["lowercase"] = True
    elif kind == "StripAccents":
        flags["strip_accents"] = True
    elif kind == "BertNormalizer":
        for key in ("lowercase", "strip_accents"):
            if key in normalizer:
                flags[key] = normalizer[key]
    elif kind == "Sequence":
        for inner in normalizer.get("normalizers", []):
            _normalizer_flags(inner, flags)


def add_special_vocab(writer: Any, folder: Path, **options: Any) -> None:
    """gguf-py's SpecialVocab (special token ids, add_bos/add_eos flags, merges, chat template)
    added to ``writer``, plus the normalizer keys the pinned converter's gguf-py writes last.

    The gguf release on PyPI (0.19.0) predates llama.cpp 0c1e570's gguf-py, which also writes
    ``tokenizer.ggml.normalizer.lowercase`` / ``.strip_accents`` (read by llama.cpp's WordPiece
    tokenizer); they are added here while the installed SpecialVocab lacks them.
    """
    gguf = require("gguf", "gguf")
    special = gguf.SpecialVocab(folder, **options)
    special.add_to_gguf(writer)
    tokenizer_file = folder / "tokenizer.json"
    if hasattr(special, "normalizer_lowercase") or not tokenizer_file.is_file():
        return
    normalizer = json.loads(tokenizer_file.read_text(encoding="utf-8")).get("normalizer")
    flags: dict[str, bool] = {}
    if normalizer:
        _normalizer_flags(normalizer, flags)
    for key in ("lowercase", "strip_accents"):
        if flags.get(key) is not None:
            writer.add_bool(f"tokenizer.ggml.normalizer.{key}", flags[key])


def _add_gpt2_vocab(writer: Any, folder: Path, hparams: dict[str, Any]) -> None:
    """The converter's ``_set_vocab_gpt2``: byte-level BPE with its merges."""
    tokens, types, tokpre = vocab_base(folder, hparams)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(tokpre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    add_special_vocab(writer, folder, load_merges=True)


def _add_llama_hf_vocab(writer: Any, folder: Path) -> None:
    """The converter's ``_set_vocab_llama_hf``: a SentencePiece-style BPE tokenizer.json."""
    gguf = require("gguf", "gguf")
    vocab = gguf.LlamaHfVocab(folder)
    tokens, scores, types = zip(*vocab.all_tokens(), strict=True)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(list(tokens))
    writer.add_token_scores(list(scores))
    writer.add_token_types(list(types))
    add_special_vocab(writer, folder, n_vocab=len(tokens))


def add_llama_vocab(writer: Any, folder: Path, hparams: dict[str, Any]) -> None:
    """LlamaModel.set_vocab of the converter for a folder with tokenizer.json (a
    SentencePiece tokenizer.model is refused: lowbit does not port that reader)."""
    gguf = require("gguf", "gguf")
    config_file = folder / "tokenizer_config.json"
    if config_file.is_file():
        config = json.loads(config_file.read_text(encoding="utf-8"))
        if (add_prefix_space := config.get("add_prefix_space")) is not None:
            writer.add_add_space_prefix(add_prefix_space)
    if (folder / "tokenizer.model").is_file():
        raise UnsupportedFormatError(
            f"{folder} has a SentencePiece tokenizer.model, which lowbit's converter does not "
            "read; convert the folder with llama.cpp's convert_hf_to_gguf.py and export that "
            ".gguf file"
        )
    if not (folder / "tokenizer.json").is_file():
        raise UnsupportedFormatError(
            f"{folder} has no tokenizer.json; save the tokenizer into the folder "
            "(tokenizer.save_pretrained) and export again"
        )
    try:
        _add_llama_hf_vocab(writer, folder)
    except (FileNotFoundError, TypeError):  # not a SentencePiece-style BPE (e.g. Llama 3)
        _add_gpt2_vocab(writer, folder, hparams)
    vocab_size = hparams.get("vocab_size", 32000)
    if vocab_size == 32016:  # CodeLlama's infill tokens, as the converter sets them
        special = gguf.SpecialVocab(
            folder, load_merges=False, special_token_types=["prefix", "suffix", "middle", "eot"]
        )
        for kind, token_id in (("prefix", 32007), ("suffix", 32008), ("middle", 32009),
                               ("eot", 32010)):  # fmt: skip
            special._set_special_token(kind, token_id)
        special.add_to_gguf(writer)
    if vocab_size == 49152:  # the converter's rule for granite-small-sized vocabularies
        writer.add_add_bos_token(False)


def add_bert_vocab(writer: Any, folder: Path, hparams: dict[str, Any]) -> None:
    """BertModel.set_vocab of the converter: WordPiece tokens in llama.cpp's phantom-space form
    ("##ing" -> "ing", "word" -> "\u2581word", control tokens unchanged)."""
    gguf = require("gguf", "gguf")
    tokens, types, tokpre = vocab_base(folder, hparams)
    writer.add_token_type_count(hparams.get("type_vocab_size", 1))

    def phantom(token: str, kind: int) -> str:
        if kind == gguf.TokenType.CONTROL:
            return token
        return token[2:] if token.startswith("##") else "\u2581" + token

    tokens = [phantom(t, k) for t, k in zip(tokens, types, strict=True)]
    writer.add_tokenizer_model("bert")
    writer.add_tokenizer_pre(tokpre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    add_special_vocab(writer, folder, n_vocab=len(tokens))
