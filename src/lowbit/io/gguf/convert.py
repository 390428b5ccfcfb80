"""A Hugging Face folder (config.json, safetensors, tokenizer files) as a float GGUF file,
written as llama.cpp's own converter writes it (convert_hf_to_gguf.py at llama.cpp 0c1e570:
``LlamaModel`` and ``BertModel`` of conversion/llama.py and conversion/bert.py, on
``TextModel``/``ModelBase`` of conversion/base.py).

Same KV metadata in the same order (general.* from gguf-py's ``Metadata``, architecture
parameters, file type, tokenizer), tensor names from gguf-py's TensorNameMap, the converter's
tensor order (safetensors parts sorted, names sorted within a part), llama's q/k row
permutation, and its float type per tensor (1-D tensors, norms, biases, position and token-type
embeddings in F32; other weights in the output type). Weights are read from safetensors only
(never unpickled).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lowbit.errors import InvalidInputError, UnsupportedFormatError, require
from lowbit.io.gguf.hf_vocab import add_bert_vocab, add_llama_vocab
from lowbit.io.gguf.names import gguf_tensor_name, hf_rows_to_gguf

logger = logging.getLogger(__name__)

# Hugging Face architecture (config.json "architectures"[0]) -> GGUF architecture
ARCHITECTURES = {"LlamaForCausalLM": "llama", "BertModel": "bert"}
# --outtype of convert_hf_to_gguf.py -> (ggml type of the weights, llama_ftype)
OUT_TYPES = {"f32": ("F32", 0), "f16": ("F16", 1), "bf16": ("BF16", 32)}
# names the converter drops before mapping (prepare_tensors, BertModel.filter_tensors)
_DROPPED_SUFFIXES = (".attention.masked_bias", ".attention.bias", ".rotary_emb.inv_freq")
_BERT_DROPPED = ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias")
# tensors the converter keeps in F32 whatever the output type (of those llama and BERT have)
_F32_TENSORS = ("POS_EMBD", "TOKEN_TYPES")
# safetensors dtype -> numpy; BF16 widens to F32 as the converter's torch .to(float32) does
_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "BF16": np.uint16}


@dataclass(frozen=True)
class HFModel:
    """What the conversion reads of a folder: its path, config (transformers' AutoConfig as a
    dict, as the converter loads it), Hugging Face and GGUF architecture names."""

    folder: Path
    hparams: dict[str, Any]
    hf_arch: str
    arch: str

    def find(self, *keys: str) -> Any:
        """The converter's ``find_hparam(keys, optional=True)``: the first key present."""
        return next((self.hparams[k] for k in keys if k in self.hparams), None)

    @property
    def block_count(self) -> int:
        return int(self.find("n_layers", "num_hidden_layers", "n_layer", "num_layers"))


def is_hf_folder(model: str | os.PathLike) -> bool:
    """Whether ``model`` is a folder with a config.json (a Hugging Face model folder)."""
    return (Path(model) / "config.json").is_file()


def read_hf_model(folder: str | os.PathLike) -> HFModel:
    """The config of a Hugging Face folder, checked to be an architecture lowbit converts."""
    folder = Path(folder)
    if not is_hf_folder(folder):
        raise InvalidInputError(
            f"{str(folder)!r} is not a Hugging Face model folder (no config.json); pass a "
            "folder saved by save_pretrained, or a .gguf file"
        )
    if (folder / "manifest.json").is_file():
        raise UnsupportedFormatError(
            f"{folder} is a lowbit save folder (quantized by lowbit); GGUF export reads float "
            "models: pass the original Hugging Face folder or .gguf file with --type/--method"
        )
    transformers = require("transformers", "hf")
    try:  # as the converter: AutoConfig without remote code, else config.json itself
        hparams = transformers.AutoConfig.from_pretrained(folder, trust_remote_code=False).to_dict()
    except Exception:  # the converter falls back to config.json on any AutoConfig failure
        hparams = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    hf_arch = (hparams.get("architectures") or [None])[0]
    if hf_arch not in ARCHITECTURES:
        raise UnsupportedFormatError(
            f"{folder}: architecture {hf_arch!r} cannot be converted to GGUF by lowbit; "
            f"supported: {', '.join(ARCHITECTURES)}. Convert it with llama.cpp's "
            "convert_hf_to_gguf.py and export that .gguf file"
        )
    if any(k in hparams for k in ("num_local_experts", "num_experts", "n_routed_experts")):
        raise UnsupportedFormatError(f"{folder}: mixture-of-experts models are not supported")
    return HFModel(folder, hparams, hf_arch, ARCHITECTURES[hf_arch])


def safetensors_parts(folder: Path) -> list[Path]:
    """The weight files of a folder as the converter picks them: the index's weight map, else
    model*.safetensors, sorted."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
        if not isinstance(weight_map, dict):
            raise InvalidInputError(f"{index} has no weight_map; re-save the model")
        names = sorted(set(weight_map.values()))
    else:
        names = sorted(
            n for n in os.listdir(folder) if n.startswith("model") and n.endswith(".safetensors")
        )
    if not names:
        raise UnsupportedFormatError(
            f"{folder} has no model*.safetensors; lowbit reads weights from safetensors only "
            "(never pickled .bin files): re-save with save_pretrained(safe_serialization=True)"
        )
    return [folder / n for n in names]


def _hf_tensors(model: HFModel) -> Iterator[tuple[str, Any]]:
    """(name, LocalTensor) of every part, in the converter's order, after its name filters."""
    gguf = require("gguf", "gguf")
    for part in safetensors_parts(model.folder):
        try:
            with gguf.utility.SafetensorsLocal(part) as tensors:
                items = list(tensors.items())
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InvalidInputError(f"{part} is not a readable safetensors file: {exc}") from exc
        for name, tensor in items:
            name = name.replace("language_model.", "")
            if model.arch == "llama":
                name = name.replace("text_model.", "")
            else:  # BertModel.filter_tensors
                name = name.removeprefix("bert.")
                if name.endswith(".gamma"):
                    name = name[: -len(".gamma")] + ".weight"
                if name.endswith(".beta"):
                    name = name[: -len(".beta")] + ".bias"
                if name in _BERT_DROPPED or name.startswith(("cls.predictions", "cls.seq_rel")):
                    continue
            if not name.endswith(_DROPPED_SUFFIXES):
                yield name, tensor


def _load(tensor: Any, name: str) -> np.ndarray:
    """A safetensors tensor as numpy: F32/F16 as stored, everything else widened to F32."""
    dtype = _DTYPES.get(tensor.dtype)
    if dtype is None:
        raise UnsupportedFormatError(f"{name}: safetensors dtype {tensor.dtype} is not supported")
    expected = math.prod(tensor.shape) * np.dtype(dtype).itemsize
    try:
        raw = tensor.mmap_bytes()
    except (OSError, ValueError) as exc:  # offsets past the end of a cut file
        raise InvalidInputError(
            f"{tensor.data_range.filename}: tensor {name} lies outside the file ({exc}); "
            "the file is damaged or cut: save the model again"
        ) from exc
    if raw.size != expected:
        raise InvalidInputError(
            f"{tensor.data_range.filename}: tensor {name} has {raw.size} bytes, its shape "
            f"needs {expected}; the file is damaged: save the model again"
        )
    data = raw.view(dtype).reshape(tensor.shape)
    if tensor.dtype == "BF16":
        return (data.astype(np.uint32) << 16).view(np.float32)
    return data.astype(np.float32) if tensor.dtype == "F64" else data


def _llama3_rope_factors(model: HFModel, rope: dict[str, Any]) -> np.ndarray:
    """LlamaModel.generate_extra_tensors: rope_freqs for rope_type "llama3"."""
    import torch

    base = rope.get("rope_theta", 10000.0)
    dim = model.hparams.get("head_dim") or (
        model.hparams["hidden_size"] // model.hparams["num_attention_heads"]
    )
    freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    factor = rope.get("factor", 8.0)
    low, high = rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old_len = rope.get("original_max_position_embeddings", 8192)
    factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < old_len / high:
            factors.append(1)
        elif wavelen > old_len / low:
            factors.append(factor)
        else:
            smooth = (old_len / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return torch.tensor(factors, dtype=torch.float32).numpy()


def _rope_parameters(model: HFModel) -> dict[str, Any]:
    """TextModel.__init__'s rope_parameters (rope_theta and rope_type mirrored in)."""
    params = dict(model.hparams.get("rope_parameters", model.hparams.get("rope_scaling")) or {})
    theta = model.find("global_rope_theta", "rope_global_theta", "rope_theta_global",
                       "rope_theta", "rotary_emb_base")  # fmt: skip
    if "rope_theta" not in params and theta is not None:
        params["rope_theta"] = theta
    if "rope_type" not in params and params.get("type") is not None:
        params["rope_type"] = params["type"]
    orig = model.find("original_max_position_embeddings")
    if "original_max_position_embeddings" not in params and orig is not None:
        params["original_max_position_embeddings"] = orig
    return params


def _tensor_type(gguf: Any, arch_id: Any, name: str, data: np.ndarray, weights: str) -> str:
    """prepare_tensors' float type choice for one tensor (GGUF name)."""
    if data.ndim <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight"):
        return "F32"
    for key in _F32_TENSORS:
        tensor = gguf.MODEL_TENSOR[key]
        if tensor in gguf.MODEL_TENSORS[arch_id] and name == gguf.TENSOR_NAMES[tensor] + ".weight":
            return "F32"
    return weights


def _add_tensors(gguf: Any, writer: Any, model: HFModel, weights: str) -> None:
    """Every tensor in the converter's order, renamed, permuted and cast as it does."""
    arch_id = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == model.arch)
    items: list[tuple[str, np.ndarray]] = []
    rope = _rope_parameters(model)
    if model.arch == "llama" and str(rope.get("rope_type", "")).lower() == "llama3":
        items.append((gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight",
                      _llama3_rope_factors(model, rope)))  # fmt: skip
    n_head = model.find("n_heads", "num_attention_heads")
    n_head_kv = model.find("n_kv_heads", "num_key_value_heads")
    for hf_name, tensor in _hf_tensors(model):
        if "block_sparse_moe.experts" in hf_name:
            raise UnsupportedFormatError(f"{hf_name}: mixture-of-experts models are not supported")
        new_name = gguf_tensor_name(hf_name, model.arch, model.block_count)
        if new_name is None:
            raise UnsupportedFormatError(
                f"{model.folder}: tensor {hf_name!r} has no GGUF name in llama.cpp's "
                f"{model.arch} table; the converter cannot map it either"
            )
        data = _load(tensor, hf_name)
        if model.arch == "llama" and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            data = hf_rows_to_gguf(data, n_head)
        elif model.arch == "llama" and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            data = hf_rows_to_gguf(data, n_head_kv if n_head_kv is not None else n_head)
        items.append((new_name, data))
    for name, data in items:
        qtype = gguf.GGMLQuantizationType[_tensor_type(gguf, arch_id, name, data, weights)]
        writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)


def _add_rope_scaling(gguf: Any, writer: Any, rope: dict[str, Any]) -> None:
    """TextModel.set_gguf_parameters' RoPE scaling keys (linear, yarn, longrope)."""
    rope_type, factor = rope.get("rope_type"), rope.get("factor")
    if rope_type is None:
        return
    if rope_type == "linear" and factor is not None:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(factor)
    elif rope_type == "yarn" and factor is not None:
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(factor)
        writer.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
        for key, add in (("extrapolation_factor", writer.add_rope_scaling_yarn_ext_factor),
                         ("attention_factor", writer.add_rope_scaling_yarn_attn_factor),
                         ("beta_fast", writer.add_rope_scaling_yarn_beta_fast),
                         ("beta_slow", writer.add_rope_scaling_yarn_beta_slow)):  # fmt: skip
            value = rope.get(key, rope.get("attn_factor") if key == "attention_factor" else None)
            if value is not None:
                add(value)
    elif rope_type in ("su", "longrope"):
        writer.add_rope_scaling_type(gguf.RopeScalingType.LONGROPE)
    elif rope_type != "dynamic" and rope_type.lower() != "llama3":
        logger.warning("unknown RoPE type %r (llama.cpp's converter ignores it too)", rope_type)


def _add_parameters(gguf: Any, writer: Any, model: HFModel, file_type: int) -> None:
    """TextModel.set_gguf_parameters (dense models) and the llama / BERT additions."""
    writer.add_block_count(model.block_count)
    for keys, add in (
        (("max_position_embeddings", "n_ctx", "n_positions", "max_length",
          "max_sequence_length", "model_max_length"), writer.add_context_length),
        (("hidden_size", "n_embd", "dim"), writer.add_embedding_length),
        (("prefix_dense_intermediate_size", "dense_intermediate_size", "intermediate_size",
          "n_inner", "hidden_dim"), writer.add_feed_forward_length),
        (("num_attention_heads", "n_head", "n_heads"), writer.add_head_count),
        (("num_key_value_heads", "n_kv_heads"), writer.add_head_count_kv),
    ):  # fmt: skip
        if (value := model.find(*keys)) is not None:
            add(value)
    if model.hparams.get("is_causal") is False:
        writer.add_causal_attention(False)
    rope = _rope_parameters(model)
    _add_rope_scaling(gguf, writer, rope)
    if (theta := rope.get("rope_theta")) is not None:
        writer.add_rope_freq_base(theta)
    if (eps := model.find("rms_norm_eps", "norm_eps")) is not None:
        writer.add_layer_norm_rms_eps(eps)
    if (eps := model.find("layer_norm_eps", "layer_norm_epsilon", "norm_epsilon")) is not None:
        writer.add_layer_norm_eps(eps)
    if (head_dim := model.hparams.get("head_dim")) is not None:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_file_type(file_type)
    if model.arch == "llama":  # LlamaModel.set_gguf_parameters
        writer.add_vocab_size(model.hparams["vocab_size"])
        rope_dim = model.hparams.get("head_dim") or (
            model.hparams["hidden_size"] // model.hparams["num_attention_heads"]
        )
        writer.add_rope_dimension_count(rope_dim)
    else:  # BertModel.set_gguf_parameters
        writer.add_causal_attention(False)
        _add_pooling_type(gguf, writer, model.folder)
        labels = model.hparams.get("id2label")
        if labels and not (len(labels) == 2 and labels.get(0, labels.get("0")) == "LABEL_0"):
            writer.add_classifier_output_labels([v for _, v in sorted(labels.items())])


def _add_pooling_type(gguf: Any, writer: Any, folder: Path) -> None:
    """TextModel._try_set_pooling_type: sentence-transformers' pooling (modules.json and the
    Pooling module's config.json) as ``{arch}.pooling_type``."""
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return
    modules = json.loads(modules_file.read_text(encoding="utf-8"))
    path = next((m["path"] for m in modules if m["type"].endswith("Pooling")), None)
    if path is None:
        return
    pooling = json.loads((folder / path / "config.json").read_text(encoding="utf-8"))
    modes = {"mean": gguf.PoolingType.MEAN, "cls": gguf.PoolingType.CLS,
             "lasttoken": gguf.PoolingType.LAST}  # fmt: skip
    if pooling.get("pooling_mode_mean_tokens"):
        kind = gguf.PoolingType.MEAN
    elif pooling.get("pooling_mode_cls_token"):
        kind = gguf.PoolingType.CLS
    elif pooling.get("pooling_mode_lasttoken"):
        kind = gguf.PoolingType.LAST
    elif pooling.get("pooling_mode") in modes:
        kind = modes[pooling["pooling_mode"]]
    else:
        raise UnsupportedFormatError(
            f"{folder / path}: llama.cpp supports only mean, CLS and last-token pooling"
        )
    writer.add_pooling_type(kind)


def convert_hf_folder(
    folder: str | os.PathLike, out: str | os.PathLike, outtype: str = "f32"
) -> Path:
    """Write a Hugging Face folder as the GGUF file ``convert_hf_to_gguf.py FOLDER --outtype
    OUTTYPE`` writes (llama.cpp 0c1e570), atomically.

    Args:
        folder: a LlamaForCausalLM or BertModel folder (config.json, model*.safetensors,
            tokenizer.json; sentence-transformers' modules.json sets BERT's pooling type).
        out: the .gguf file to write (replaced atomically).
        outtype: "f32", "f16" or "bf16": the type of the weights (norms, biases and
            1-D tensors stay F32, as the converter keeps them).
    Returns: ``out``.
    """
    from lowbit.atomic import atomic_file_path

    if outtype not in OUT_TYPES:
        raise UnsupportedFormatError(
            f"unknown outtype {outtype!r}; choose one of {', '.join(OUT_TYPES)}"
        )
    gguf = require("gguf", "gguf")
    model = read_hf_model(folder)
    weights, file_type = OUT_TYPES[outtype]
    writer = gguf.GGUFWriter(path=None, arch=model.arch)
    _add_tensors(gguf, writer, model, weights)
    # ModelBase.prepare_metadata: general.* (gguf-py's Metadata), parameters, tokenizer
    total, shared, expert, expert_count = writer.get_total_parameter_count()
    meta = gguf.Metadata.load(None, model.folder, None, total)
    if meta.name is None:
        meta.name = model.folder.name
    if meta.size_label is None and total > 0:
        meta.size_label = gguf.size_label(total, shared, expert, expert_count)
    writer.add_type(gguf.GGUFType.MODEL)
    meta.set_gguf_meta_model(writer)
    _add_parameters(gguf, writer, model, file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    if model.arch == "llama":
        add_llama_vocab(writer, model.folder, model.hparams)
    else:
        add_bert_vocab(writer, model.folder, model.hparams)
    out = Path(out)
    with atomic_file_path(out) as tmp:
        writer.write_header_to_file(path=tmp)
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return out


@contextlib.contextmanager
def hf_as_gguf(folder: str | os.PathLike, near: str | os.PathLike) -> Iterator[Path]:
    """``folder`` converted to a temporary F32 GGUF file in a scratch folder beside ``near``
    (an export's --out; lowbit.atomic.scratch_folder), removed when the block ends, also after
    an error."""
    from lowbit.atomic import scratch_folder

    with scratch_folder(near) as tmp_dir:
        yield convert_hf_folder(folder, tmp_dir / "f32.gguf", "f32")
