"""``load_gguf(path)``: a llama-family GGUF file as a torch model with lowbit weights.

The model is transformers' LlamaForCausalLM built from the file's metadata (transformers'
own GGUF config mapping). Linear weights stored as Q8_0, Q4_0 or Q4_1 become QuantLinear
modules holding lowbit's integer containers, losslessly (same codes, fp16 scales, groups
of 32 along the input dimension):

- Q8_0, ``d·q``: int8 codes, symmetric, PerGroup(32), fp16 scale d.
- Q4_0, ``d·(q - 8)``: signed int4 codes q - 8, symmetric, PerGroup(32), fp16 scale d.
- Q4_1, ``d·q + m``: uint4 codes q, offset form (scale d, offset m, both fp16).

Every other tensor (norms, embeddings, K-quants, F16, ...) is dequantized to float with
gguf-py. llama.cpp's converter permutes the rows of attn_q/attn_k for its rope layout; the
permutation is undone here, on codes and scales alike (rows hold whole blocks).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lowbit.errors import UnsupportedFormatError, require
from lowbit.formats.affine import QParams
from lowbit.formats.granularity import PerGroup
from lowbit.formats.qtypes import IntType
from lowbit.io.gguf.reader import GGUFFile, GGUFTensor, read_gguf
from lowbit.tensors.integer import IntPackedTensor

logger = logging.getLogger(__name__)

ARCHITECTURES = ("llama",)
BLOCK = 32
# GGUF tensor name -> transformers LlamaForCausalLM parameter name.
_GLOBAL = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_BLOCK_RE = re.compile(r"^blk\.(\d+)\.(\w+)\.(weight|bias)$")
_QUANTIZED = ("Q8_0", "Q4_0", "Q4_1")


def hf_name(name: str) -> str | None:
    """The transformers parameter name of a GGUF tensor, or None for tensors llama ignores
    (rope_freqs, ...)."""
    if name in _GLOBAL:
        return _GLOBAL[name]
    m = _BLOCK_RE.match(name)
    if m and m[2] in _BLOCK_NAMES:
        return f"model.layers.{m[1]}.{_BLOCK_NAMES[m[2]]}.{m[3]}"
    return None


def unpermute_rows(x: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation (convert_hf_to_gguf.py LlamaModel.permute) on
    the first axis of ``x`` (weights, codes or per-row scales)."""
    rows = x.shape[0]
    w = x.reshape(n_head, rows // n_head // 2, 2, *x.shape[1:])
    return w.swapaxes(2, 1).reshape(x.shape)


def decode_blocks(gguf_file: GGUFFile, t: GGUFTensor) -> dict[str, np.ndarray]:
    """Codes and fp16 parameters of a Q8_0/Q4_0/Q4_1 tensor of numpy shape (rows, cols):
    ``codes`` (rows, cols) int8/uint8 as lowbit stores them, ``scale`` (and ``offset``)
    (rows, cols / 32) float16."""
    rows, cols = t.shape
    blocks = gguf_file.raw(t).reshape(rows, cols // BLOCK, t.type.type_size)
    d = blocks[..., :2].copy().view(np.float16)[..., 0]
    if t.type.name == "Q8_0":
        codes = blocks[..., 2:].copy().view(np.int8)
        return {"codes": codes.reshape(rows, cols), "scale": d}
    qs = blocks[..., 2:] if t.type.name == "Q4_0" else blocks[..., 4:]
    # ggml's 4-bit layout: byte j holds element j (low nibble) and element j + 16 (high).
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).reshape(rows, cols)
    if t.type.name == "Q4_0":
        return {"codes": (q.astype(np.int8) - 8), "scale": d}
    m = blocks[..., 2:4].copy().view(np.float16)[..., 0]
    return {"codes": q, "scale": d, "offset": m}


def quantized_weight(gguf_file: GGUFFile, t: GGUFTensor, n_head: int | None) -> IntPackedTensor:
    """A Q8_0/Q4_0/Q4_1 tensor as an IntPackedTensor with the same codes and scales."""
    parts = decode_blocks(gguf_file, t)
    if n_head is not None:
        parts = {k: unpermute_rows(v, n_head) for k, v in parts.items()}
    kind = t.type.name
    qtype = IntType(8, True) if kind == "Q8_0" else IntType(4, kind == "Q4_0")
    offset = parts.get("offset")
    qparams = QParams(
        scale=torch.from_numpy(parts["scale"].astype(np.float32)),
        qtype=qtype,
        granularity=PerGroup(BLOCK),
        qmin=qtype.qmin,
        qmax=qtype.qmax,
        offset=None if offset is None else torch.from_numpy(offset.astype(np.float32)),
    )
    codes = torch.from_numpy(np.ascontiguousarray(parts["codes"]))
    return IntPackedTensor.from_codes(codes, qparams, scale_dtype=torch.float16)


def llama_config(gguf_file: GGUFFile) -> Any:
    """transformers' LlamaConfig from the file's metadata (transformers' GGUF key mapping)."""
    transformers = require("transformers", "hf")
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    meta = gguf_file.metadata
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise UnsupportedFormatError(
            f"{gguf_file.path} holds a {arch!r} model; load_gguf reads the llama family "
            f"({', '.join(ARCHITECTURES)}); load other architectures with "
            "lowbit.io.load_model (transformers dequantizes them to float)"
        )
    kwargs: dict[str, Any] = {}
    for key, name in GGUF_CONFIG_MAPPING["llama"].items():
        if f"llama.{key}" in meta and name is not None:
            kwargs[name] = meta[f"llama.{key}"]
    if "vocab_size" not in kwargs:
        kwargs["vocab_size"] = len(meta["tokenizer.ggml.tokens"])
    for key, name in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id")):
        if f"tokenizer.ggml.{key}" in meta:
            kwargs[name] = int(meta[f"tokenizer.ggml.{key}"])
    if "pad_token_id" not in kwargs and "tokenizer.ggml.padding_token_id" in meta:
        kwargs["pad_token_id"] = int(meta["tokenizer.ggml.padding_token_id"])
    kwargs["tie_word_embeddings"] = not any(t.name == "output.weight" for t in gguf_file.tensors)
    return transformers.LlamaConfig(**kwargs)


def load_gguf(
    path: str | Path, *, dtype: torch.dtype = torch.float32, kernel: str | None = None
) -> nn.Module:
    """A llama-family GGUF file as transformers' LlamaForCausalLM in eval mode, its
    Q8_0/Q4_0/Q4_1 linear weights as lowbit QuantLinear modules (lossless), the rest
    dequantized to ``dtype``. ``kernel`` forces a QuantLinear kernel by registry name (e.g.
    lowbit.kernels.REFERENCE_NAME: dequantize + float matmul); by default each layer gets
    the best that applies (the aten int4/int8 weight-only kernels compute in bf16).

    Raises:
        InvalidInputError: the file is damaged (lowbit.io.gguf.read_gguf's checks).
        UnsupportedFormatError: not a llama-family model, or tensors it does not expect.
        MissingDependencyError: transformers or gguf is not installed.
    """
    from lowbit.nn import QuantLinear
    from lowbit.nn.replace import set_module

    transformers = require("transformers", "hf")
    gguf_file = read_gguf(path)
    config = llama_config(gguf_file)
    model = transformers.LlamaForCausalLM(config)
    heads = {"attn_q": config.num_attention_heads, "attn_k": config.num_key_value_heads}
    state: dict[str, torch.Tensor] = {}
    for t in gguf_file.tensors:
        name = hf_name(t.name)
        if name is None:
            logger.info("%s: tensor %s is not used by LlamaForCausalLM", gguf_file.path, t.name)
            continue
        part = _BLOCK_RE.match(t.name)
        n_head = heads.get(part[2]) if part else None
        module_name = name.rsplit(".", 1)[0]
        if t.type.name in _QUANTIZED and len(t.shape) == 2 and module_name != "model.embed_tokens":
            layer = model.get_submodule(module_name)
            if not isinstance(layer, nn.Linear):  # lm_head and projections are Linear
                raise UnsupportedFormatError(f"{t.name} maps to {module_name}, not a Linear")
            weight = quantized_weight(gguf_file, t, n_head)
            set_module(model, module_name, QuantLinear(weight, None, kernel=kernel))
            continue
        value = gguf_file.dequantize(t)
        if n_head is not None:
            value = unpermute_rows(value, n_head)
        state[name] = torch.from_numpy(np.array(value, copy=True)).to(dtype)
    expected = {
        k for k, _ in model.named_parameters() if not k.endswith("lm_head.weight")
    }  # a tied lm_head comes from the embeddings
    missing = {k for k in expected if k not in state and "." in k}
    quantized = {n for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    missing = {k for k in missing if k.rsplit(".", 1)[0] not in quantized}
    if missing:
        raise UnsupportedFormatError(
            f"{gguf_file.path} lacks tensors LlamaForCausalLM needs: {sorted(missing)[:5]}; "
            "it is not a complete llama model (convert it again with convert_hf_to_gguf.py)"
        )
    model.load_state_dict(state, strict=False)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    return model.to(dtype).eval()


class GGUFTensors:
    """A llama-family GGUF file's tensors under transformers' names, dequantized to float32
    one at a time: the source lowbit.streaming reads a GGUF model from. The q/k rows are
    un-permuted as load_gguf does, and a tensor's pages of the memory map are dropped once
    it is read, so the resident memory is the tensor in use, not the file."""

    def __init__(self, path: str | Path) -> None:
        self.file = read_gguf(path)
        config = llama_config(self.file)
        heads = {"attn_q": config.num_attention_heads, "attn_k": config.num_key_value_heads}
        self.tensors: dict[str, tuple[GGUFTensor, int | None]] = {}
        for t in self.file.tensors:
            name = hf_name(t.name)
            if name is not None:
                part = _BLOCK_RE.match(t.name)
                self.tensors[name] = (t, heads.get(part[2]) if part else None)

    def read(self, name: str) -> torch.Tensor:
        """A new float32 tensor holding ``name`` (a transformers parameter name)."""
        t, n_head = self.tensors[name]
        value = self.file.dequantize(t)
        if n_head is not None:
            value = unpermute_rows(value, n_head)
        out = torch.from_numpy(np.array(value, dtype=np.float32, copy=True))
        self.file.release(t)
        return out
