"""Hugging Face <-> GGUF tensor names and row order, as llama.cpp's converter writes them.

Names come from gguf-py's TensorNameMap (the converter's own table). llama.cpp's converter
permutes the rows of llama's attn_q/attn_k (rotary halves interleaved per head); every method
here works row by row, so values chosen on Hugging Face rows are moved to GGUF rows as bytes.
"""

from __future__ import annotations

import functools
from typing import Any, TypeVar

import numpy as np
import torch

from lowbit.errors import require

_ArrayT = TypeVar("_ArrayT", np.ndarray, torch.Tensor)


def gguf_tensor_name(hf_name: str, arch: str, n_blocks: int) -> str | None:
    """The GGUF name of a Hugging Face parameter ("model.layers.0.self_attn.q_proj.weight" ->
    "blk.0.attn_q.weight"), or None when llama.cpp's converter has no name for it."""
    name_map = _name_map(arch, n_blocks)
    if name_map is None:
        return None
    return name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))


@functools.cache
def _name_map(arch: str, n_blocks: int) -> Any:
    """gguf-py's TensorNameMap of an architecture (None: gguf-py does not know it), built
    once: building it takes ~15 ms, and an export asks for every tensor of the model."""
    gguf = require("gguf", "gguf")
    arch_id = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}.get(arch)
    return None if arch_id is None else gguf.get_tensor_name_map(arch_id, n_blocks)


def permuted_heads(gguf_name: str, arch: str, n_head: int, n_head_kv: int) -> int | None:
    """How many heads llama.cpp's converter interleaves the rows of this tensor over (attn_q:
    n_head, attn_k: n_head_kv), or None when its rows keep Hugging Face's order."""
    if arch != "llama":
        return None
    if gguf_name.endswith("attn_q.weight"):
        return n_head
    if gguf_name.endswith("attn_k.weight"):
        return n_head_kv
    return None


def hf_rows_to_gguf(rows: _ArrayT, n_heads: int) -> _ArrayT:
    """convert_hf_to_gguf.py's LlamaModel.permute: per head, the two rotary halves of the
    rows are interleaved. Works on any (rows, ...) array, bytes of encoded rows included."""
    shape = rows.shape
    r = rows.reshape(n_heads, 2, shape[0] // n_heads // 2, *shape[1:])
    return r.swapaxes(1, 2).reshape(shape)


def gguf_rows_to_hf(rows: _ArrayT, n_heads: int) -> _ArrayT:
    """The inverse of :func:`hf_rows_to_gguf` (what transformers does when it loads GGUF)."""
    shape = rows.shape
    r = rows.reshape(n_heads, shape[0] // n_heads // 2, 2, *shape[1:])
    return r.swapaxes(1, 2).reshape(shape)
