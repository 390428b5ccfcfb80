"""Per-tensor GGUF type choice: a port of llama.cpp's ``llama_tensor_get_type`` (src/llama-quant.cpp
at llama.cpp 0c1e570, vendored in llama-cpp-python 0.3.36) for the file types lowbit exports.

Scope of the port: dense models (no experts), not Falcon, not a 70B model, no
``--pure``/``--tensor-type``/``--output-tensor-type`` overrides. An imatrix changes two rules
(``has_imatrix``): ffn_down of the first n_layer/8 layers goes to Q4_1/Q5_1 in q4_0/q5_0
files and stays IQ4_NL (not Q5_K) in iq4_nl files. The rules are data (the tables
below) read by one function, :func:`choose_tensor_types`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lowbit.errors import UnsupportedFormatError

# ggml block sizes (elements per block) of the types this module can choose.
BLOCK_SIZE = {
    "F32": 1, "F16": 1, "BF16": 1,
    "Q4_0": 32, "Q4_1": 32, "Q5_0": 32, "Q5_1": 32, "Q8_0": 32, "IQ4_NL": 32,
    "Q2_K": 256, "Q3_K": 256, "Q4_K": 256, "Q5_K": 256, "Q6_K": 256,
}  # fmt: skip

# export type name -> (default ggml type, llama_ftype value written as general.file_type)
FILE_TYPES = {
    "f32": ("F32", 0), "f16": ("F16", 1), "q4_0": ("Q4_0", 2), "q4_1": ("Q4_1", 3),
    "q8_0": ("Q8_0", 7), "q5_0": ("Q5_0", 8), "q5_1": ("Q5_1", 9), "q2_k": ("Q2_K", 10),
    "q3_k_s": ("Q3_K", 11), "q3_k_m": ("Q3_K", 12), "q3_k_l": ("Q3_K", 13),
    "q4_k_s": ("Q4_K", 14), "q4_k_m": ("Q4_K", 15), "q5_k_s": ("Q5_K", 16),
    "q5_k_m": ("Q5_K", 17), "q6_k": ("Q6_K", 18), "iq4_nl": ("IQ4_NL", 25), "bf16": ("BF16", 32),
}  # fmt: skip

# tensor_type_fallback: a 256-block type on a row length it does not divide.
FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}

# tensor_allows_quantization: names containing one of these stay in their source type.
_NOT_QUANTIZED_PARTS = ("_norm.weight", "ffn_gate_inp.weight", "altup", "laurel",
                        "per_layer_model_proj", "ssm_conv1d", "attn_rel_b.weight",
                        ".position_embd", ".rel_pos", ".patch_embd")  # fmt: skip
_NOT_QUANTIZED_NAMES = ("position_embd.weight", "token_types.weight")

# tensor_get_category, in llama.cpp's order (first match wins).
_CATEGORIES = (
    ("attn_qkv.weight", "attn_v"),
    ("attn_kv_b.weight", "attn_v"),
    ("attn_v.weight", "attn_v"),
    ("attn_k.weight", "attn_k"),
    ("attn_q.weight", "attn_q"),
    ("attn_output.weight", "attn_output"),
    ("ffn_up", "ffn_up"),
    ("ffn_gate", "ffn_gate"),
    ("ffn_down", "ffn_down"),
)


@dataclass(frozen=True)
class TensorInfo:
    """What the choice needs of one tensor: GGUF name, shape in ggml order (ne[0] = row
    length first) and the source ggml type name ("F32", "Q4_1", ...)."""

    name: str
    shape: tuple[int, ...]
    type: str


def _category(name: str) -> str:
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    for part, category in _CATEGORIES:
        if part in name:
            return category
    return "other"


def allows_quantization(t: TensorInfo) -> bool:
    """llama.cpp's tensor_allows_quantization: 2-D+ tensors named *weight, not norms etc."""
    if len(t.shape) < 2 or all(d == 1 for d in t.shape[1:]):
        return False  # ggml_n_dims < 2
    if not t.name.endswith("weight") or t.name in _NOT_QUANTIZED_NAMES:
        return False
    return not any(part in t.name for part in _NOT_QUANTIZED_PARTS)


def _use_more_bits(i_layer: int, n_layers: int) -> bool:
    return (
        i_layer < n_layers // 8
        or i_layer >= 7 * n_layers // 8
        or (i_layer - n_layers // 8) % 3 == 2
    )


def _mix_type(ftype: str, new: str, t: TensorInfo, category: str, state: dict) -> str:
    """llama_tensor_get_type_impl for dense, non-Falcon models."""
    if category == "output" or (state["tied"] and category == "token_embd"):
        if t.shape[0] % BLOCK_SIZE[new] != 0:
            return "Q8_0"
        return new if new == "Q8_0" else "Q6_K"
    if category == "token_embd":
        return new
    n_gqa = state["n_gqa"]
    if category == "attn_v":
        i = state["i_attention_wv"]
        state["i_attention_wv"] += 1
        if ftype == "q2_k":
            return "Q4_K" if n_gqa >= 4 else "Q3_K"
        if ftype == "q3_k_m":
            return "Q5_K" if i < 2 else "Q4_K"
        if ftype == "q3_k_l":
            return "Q5_K"
        if ftype == "iq4_nl" and n_gqa >= 4:
            return "Q5_K"
        if ftype in ("q4_k_m", "q5_k_m") and _use_more_bits(i, state["n_attention_wv"]):
            return "Q6_K"
        if ftype == "q4_k_s" and i < 4:
            return "Q5_K"
        return new
    if category == "ffn_down":
        i, n = state["i_ffn_down"], state["n_layer"]
        state["i_ffn_down"] += 1
        if ftype == "q2_k":
            return "Q3_K"
        if ftype == "q3_k_m":
            return "Q5_K" if i < n // 16 else "Q4_K"  # arch != FALCON
        if ftype == "q3_k_l":
            return "Q5_K"
        if ftype == "q4_k_m":
            return "Q6_K" if _use_more_bits(i, n) else new
        if ftype == "iq4_nl" and i < n // 8 and not state["has_imatrix"]:
            return "Q5_K"
        if ftype == "q5_k_m":
            return "Q6_K" if _use_more_bits(i, n) else new
        if ftype == "q4_k_s" and i < n // 8:
            return "Q5_K"
        if ftype in ("q4_0", "q5_0") and state["has_imatrix"] and i < n // 8:
            return "Q4_1" if ftype == "q4_0" else "Q5_1"  # "guard against craziness"
        return new
    if category == "attn_output":
        return {"q2_k": "Q3_K", "q3_k_m": "Q4_K", "q3_k_l": "Q5_K"}.get(ftype, new)
    return new


def _fallback(t: TensorInfo, target: str) -> str:
    """tensor_type_fallback: a type whose block does not divide the row length."""
    ncols = t.shape[0]
    if ncols % BLOCK_SIZE[target] == 0:
        return target
    result = FALLBACK.get(target, target)
    if ncols % BLOCK_SIZE[result] != 0:
        result = "F16"
    return result


def choose_tensor_types(
    file_type: str,
    tensors: Sequence[TensorInfo],
    *,
    n_layer: int,
    n_head: int,
    n_head_kv: int,
    has_imatrix: bool = False,
) -> list[str]:
    """The ggml type llama-quantize gives each tensor (in file order) for ``file_type``.

    Args:
        file_type: one of :data:`FILE_TYPES` ("q4_k_m", "q8_0", "f16", ...).
        tensors: every tensor of the model, in file order (the counters depend on order).
        n_layer, n_head, n_head_kv: the model's block count and attention heads (n_gqa).
        has_imatrix: llama-quantize was given an imatrix (its ``qs.has_imatrix``).
    Returns: ggml type names, one per tensor.
    """
    if file_type not in FILE_TYPES:
        raise UnsupportedFormatError(
            f"unknown GGUF type {file_type!r}; choose one of {', '.join(FILE_TYPES)}"
        )
    default = FILE_TYPES[file_type][0]
    quantized = BLOCK_SIZE[default] > 1
    categories = [_category(t.name) for t in tensors]
    state = {
        "tied": "output" not in categories,
        "n_attention_wv": sum(1 for c in categories if c == "attn_v"),
        "i_attention_wv": 0, "i_ffn_down": 0, "n_layer": n_layer,
        "n_gqa": n_head // n_head_kv if n_head_kv else 0, "has_imatrix": has_imatrix,
    }  # fmt: skip
    out = []
    for t, category in zip(tensors, categories, strict=True):
        if not allows_quantization(t):
            out.append(t.type)
            continue
        new = default
        if quantized:
            new = _fallback(t, _mix_type(file_type, new, t, category, state))
        out.append(new)
    return out
