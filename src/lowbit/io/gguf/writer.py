"""Write a GGUF file as llama-quantize would: per-tensor types from :mod:`.types`, KV metadata
and tensor order kept from a GGUF source, written atomically through gguf-py's GGUFWriter.

A Hugging Face folder is first converted as llama.cpp's converter would (:mod:`.convert`):
float types are the converter's own file; other types are llama-quantize's rules applied to
the converter's F32 file, a temporary file beside the output (:func:`gguf_source`).
Block encoding goes through one function, :func:`encode_tensor`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lowbit.errors import InvalidInputError, UnsupportedFormatError, require
from lowbit.formats.blocks import BLOCK_TYPES, get_block_codec
from lowbit.io.gguf.convert import (
    OUT_TYPES,
    convert_hf_folder,
    hf_as_gguf,
    is_hf_folder,
    safetensors_parts,
)
from lowbit.io.gguf.gguf_py import gguf_py_reader
from lowbit.io.gguf.reader import read_gguf
from lowbit.io.gguf.types import FILE_TYPES, TensorInfo, choose_tensor_types
from lowbit.progress import track

logger = logging.getLogger(__name__)

# float types are written through gguf-py's casts (byte-identical to ggml's)
_FLOAT_TYPES = ("F32", "F16", "BF16")
GGML_QNT_VERSION = 2
# KV keys llama-quantize drops (split keys) or sets itself (appended last, in this order).
_DROPPED_KEYS = ("split.no", "split.count", "split.tensors.count")
_SET_KEYS = ("general.quantization_version", "general.file_type")


def encode_tensor(
    type_name: str, weight: np.ndarray, importance: torch.Tensor | None = None
) -> np.ndarray:
    """Encode a float32 weight (numpy order, row length last) as ggml type ``type_name``.

    Block types go through lowbit's bit-exact codecs (``lowbit.formats.blocks``: RTN as
    llama-quantize without an imatrix; with ``importance``, one value per column, as
    llama-quantize with an imatrix); F32/F16/BF16 through gguf-py's casts (ggml's rounding).
    Returns: uint8 array (rows, bytes per row), the bytes llama-quantize writes.
    """
    data = np.require(weight, dtype=np.float32, requirements=["C"])
    rows = data.reshape(-1, data.shape[-1]) if data.ndim else data.reshape(1, 1)
    if type_name.lower() in BLOCK_TYPES:
        codec = get_block_codec(type_name)
        with warnings.catch_warnings():
            # an F32 source's memory map is read-only, and the codecs only read it: no copy
            warnings.filterwarnings("ignore", "The given NumPy array is not writable")
            x = torch.from_numpy(rows)
        return codec.quantize(x, importance).numpy()
    if type_name.upper() not in _FLOAT_TYPES:
        raise UnsupportedFormatError(
            f"GGUF type {type_name} has no encoder; known: {', '.join(_FLOAT_TYPES)} and "
            f"{', '.join(BLOCK_TYPES)}"
        )
    gguf = require("gguf", "gguf")
    encoded = np.ascontiguousarray(
        gguf.quants.quantize(rows, gguf.GGMLQuantizationType[type_name.upper()])
    )
    return encoded.view(np.uint8).reshape(rows.shape[0], -1)


def llama_quantize_order(names: list[str]) -> list[str]:
    """The order llama-quantize writes tensors in: its weights_map comparer (layer number
    from "blk.N.", -1 for others, then the name)."""

    def key(name: str) -> tuple[int, bytes]:
        m = re.match(r"blk\.(-?\d+)\.", name)
        return (int(m.group(1)) if m else -1, name.encode())

    return sorted(names, key=key)


@dataclass
class ChosenValues:
    """What a calibrated method chose, by GGUF tensor name and in GGUF row order.

    encoded: uint8 (rows, bytes per row) in the tensor's planned type, written as they are;
    floats: float32 replacements of source tensors (AWQ's scales folded into a norm), then
    encoded like any source tensor; importance: one value per column, for the imatrix-weighted
    codecs (tensors without one are rounded to nearest, as llama-quantize does); kv: KV pairs
    written last, in this order (str or uint32; llama-quantize's quantize.imatrix.* keys).
    """

    encoded: dict[str, np.ndarray] = field(default_factory=dict)
    floats: dict[str, np.ndarray] = field(default_factory=dict)
    importance: dict[str, torch.Tensor] = field(default_factory=dict)
    kv: dict[str, str | int] = field(default_factory=dict)


@dataclass
class ExportResult:
    """What an export wrote: sizes in bytes, weights, per-type tensor counts."""

    path: Path
    input_bytes: int
    output_bytes: int
    n_params: int
    type_counts: dict[str, int] = field(default_factory=dict)
    tensor_types: dict[str, str] = field(default_factory=dict)
    mixed: dict[str, Any] | None = None  # how mixed precision chose the per-tensor types

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.output_bytes / self.n_params


def check_export_args(file_type: str, out: Path) -> None:
    """The cheap checks of an export, before any tensor is read: type name and --out."""
    if file_type not in FILE_TYPES:
        raise UnsupportedFormatError(
            f"unknown GGUF type {file_type!r}; choose one of {', '.join(FILE_TYPES)}"
        )
    if out.suffix != ".gguf":
        raise InvalidInputError(f"--out must name a .gguf file, got {str(out)!r}")
    if not out.parent.is_dir():
        raise InvalidInputError(
            f"the folder of --out does not exist: {str(out.parent)!r}; create it first"
        )


def _field_value(gguf, f):
    """A reader field as (value, type, sub_type) for GGUFWriter.add_key_value."""
    vtype = f.types[0]
    if vtype == gguf.GGUFValueType.ARRAY:
        sub = f.types[-1]
        if sub == gguf.GGUFValueType.STRING:
            return [bytes(f.parts[i]) for i in f.data], vtype, sub
        return [p.item() for i in f.data for p in f.parts[i]], vtype, sub
    if vtype == gguf.GGUFValueType.STRING:
        return bytes(f.parts[f.data[0]]), vtype, None
    return f.parts[f.data[0]].item(), vtype, None


def source_bytes(model: str | os.PathLike) -> int:
    """The size of an export's source: a GGUF file, or a Hugging Face folder's weight files."""
    src = Path(model)
    if is_hf_folder(src):
        return sum(p.stat().st_size for p in safetensors_parts(src))
    return src.stat().st_size


@contextlib.contextmanager
def gguf_source(model: str | os.PathLike, out: str | os.PathLike) -> Iterator[Path]:
    """The GGUF file an export reads: ``model`` itself, or a Hugging Face folder converted to a
    temporary F32 GGUF file (as convert_hf_to_gguf.py --outtype f32 writes it) in a temporary
    folder beside ``out``, removed when the block ends, also after an error."""
    if is_hf_folder(model):
        with hf_as_gguf(model, near=out) as path:
            yield path
    else:
        yield Path(model)


def open_source(model: str | os.PathLike):
    """gguf-py's reader of a GGUF source, after lowbit's validating reader accepted it."""
    src = Path(model)
    if src.is_dir():
        raise InvalidInputError(
            f"{str(src)!r} is a folder without config.json; MODEL must be a .gguf file or a "
            "Hugging Face folder (config.json, model.safetensors, tokenizer.json)"
        )
    if src.suffix != ".gguf" or not src.is_file():
        raise InvalidInputError(
            f"MODEL must be an existing .gguf file or Hugging Face folder, got {str(src)!r}"
        )
    # lowbit's validating reader first: a damaged or hostile file is one clear error here,
    # never an ad-hoc exception (or a huge allocation) from gguf-py's reader below
    if not isinstance(read_gguf(src).metadata.get("general.architecture"), str):
        raise InvalidInputError(
            f"{src} has no general.architecture; export a GGUF file written by llama.cpp's "
            "converter or by lowbit"
        )
    return gguf_py_reader(src)


def write_gguf(
    model: str | os.PathLike,
    out: str | os.PathLike,
    file_type: str,
    *,
    chosen: ChosenValues | None = None,
    has_imatrix: bool = False,
    tensor_types: dict[str, str] | None = None,
    reader: Any = None,
) -> ExportResult:
    """Write ``model`` as a GGUF file of ``file_type``, as llama-quantize would.

    A Hugging Face folder with a float type (f32, f16, bf16) and no chosen values gives the
    file convert_hf_to_gguf.py --outtype writes; with other types, llama-quantize's result on
    the converter's F32 file.

    Args:
        model: a GGUF file (llama family or BERT) or a Hugging Face folder (LlamaForCausalLM,
            BertModel).
        out: the .gguf file to write (replaced atomically).
        file_type: "q8_0", "q4_k_m", "f16", ... (see lowbit.io.gguf.types.FILE_TYPES).
        chosen: values a calibrated method chose (see ChosenValues); None rounds to nearest.
        has_imatrix: plan the types as llama-quantize given an imatrix (two rules differ);
            the caller's plan and this one must agree.
        tensor_types: {tensor name: ggml type} replacing the plan's type of those tensors
            (mixed precision; llama-quantize's --tensor-type).
        reader: ``open_source(model)`` when the caller has it open already (a GGUF file
            ``model``): parsing SmolLM2's header and vocabulary again takes seconds.
    """
    src, out = Path(model), Path(out)
    check_export_args(file_type, out)
    if is_hf_folder(src) and file_type in OUT_TYPES and chosen is None and not tensor_types:
        return _describe_written(convert_hf_folder(src, out, file_type), source_bytes(src))
    gguf = require("gguf", "gguf")
    with gguf_source(src, out) as path:
        result = _write_from_reader(
            gguf, reader or open_source(path), path, out, file_type, chosen or ChosenValues(),
            has_imatrix, tensor_types or {},
        )  # fmt: skip
    return replace(result, input_bytes=source_bytes(src))


def _describe_written(path: Path, input_bytes: int) -> ExportResult:
    """The ExportResult of a file written by the converter (read back from its header)."""
    tensors = read_gguf(path).tensors
    types = {t.name: t.type.name for t in tensors}
    return ExportResult(
        path=path, input_bytes=input_bytes, output_bytes=path.stat().st_size,
        n_params=sum(int(np.prod(t.ne)) for t in tensors),
        type_counts=dict(Counter(types.values())), tensor_types=types,
    )  # fmt: skip


def plan_types(
    reader, file_type: str, *, has_imatrix: bool = False, overrides: dict[str, str] | None = None
) -> tuple[list[TensorInfo], list[str]]:
    """The tensors of a GGUF reader in llama-quantize's order and the type each gets
    (``has_imatrix``: as llama-quantize given an imatrix, which changes two rules;
    ``overrides``: {tensor name: type} replacing the rules' type)."""
    arch = str(bytes(reader.fields["general.architecture"].parts[-1]), "utf-8")

    def kv_int(key: str, default: int = 0) -> int:
        f = reader.fields.get(f"{arch}.{key}")
        return int(f.parts[f.data[0]].item()) if f is not None else default

    by_name = {t.name: t for t in reader.tensors}
    infos = [
        TensorInfo(n, tuple(int(d) for d in by_name[n].shape), by_name[n].tensor_type.name)
        for n in llama_quantize_order(list(by_name))
    ]
    n_head = kv_int("attention.head_count")
    types = choose_tensor_types(
        file_type, infos, n_layer=kv_int("block_count"), n_head=n_head,
        n_head_kv=kv_int("attention.head_count_kv", n_head), has_imatrix=has_imatrix,
    )  # fmt: skip
    overrides = overrides or {}
    unknown = sorted(set(overrides) - set(by_name))
    if unknown:
        raise InvalidInputError(f"no tensor named {', '.join(unknown)} in the model")
    return infos, [overrides.get(i.name, t) for i, t in zip(infos, types, strict=True)]


def _tensor_bytes(gguf, t, info: TensorInfo, new_type: str, chosen: ChosenValues) -> np.ndarray:
    """The bytes of one tensor in ``new_type``: a method's encoded values, the source's bytes
    when the type is kept (llama-quantize copies those), else the (replaced) float encoded."""
    name = info.name
    k = info.shape[0]
    if name in chosen.encoded:
        data = np.ascontiguousarray(chosen.encoded[name], dtype=np.uint8)
        want = (
            get_block_codec(new_type).nbytes((data.shape[0], k))
            if new_type.lower() in BLOCK_TYPES
            else None
        )
        if want is None or data.size != want:
            raise InvalidInputError(
                f"{name}: the method's values are not {new_type} bytes of a row of {k}"
            )
        return data
    if new_type == info.type and name not in chosen.floats:
        data = np.asarray(t.data).view(np.uint8)
        return data.reshape(-1, data.size // max(1, int(np.prod(info.shape[1:]))))
    weight = chosen.floats.get(name)
    if weight is None:
        weight = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
    return encode_tensor(new_type, weight.reshape(-1, k), chosen.importance.get(name))


def _write_from_reader(
    gguf,
    reader,
    src: Path,
    out: Path,
    file_type: str,
    chosen: ChosenValues,
    has_imatrix: bool,
    overrides: dict[str, str],
) -> ExportResult:
    from lowbit.atomic import atomic_file_path

    arch = str(bytes(reader.fields["general.architecture"].parts[-1]), "utf-8")
    by_name = {t.name: t for t in reader.tensors}
    infos, types = plan_types(reader, file_type, has_imatrix=has_imatrix, overrides=overrides)
    order = [i.name for i in infos]
    with atomic_file_path(out) as tmp:
        writer = gguf.GGUFWriter(tmp, arch)
        writer.kv_data[0].clear()  # GGUFWriter adds general.architecture; keep the source's order
        alignment = None
        for key, f in reader.fields.items():
            skip = key in _DROPPED_KEYS or key in _SET_KEYS or key in chosen.kv
            if key.startswith("GGUF.") or skip:
                continue
            value, vtype, sub = _field_value(gguf, f)
            if key == "general.alignment":
                alignment = int(value)
            writer.add_key_value(key, value, vtype, sub_type=sub)
        if alignment is not None:
            writer.data_alignment = alignment
        writer.add_uint32("general.quantization_version", GGML_QNT_VERSION)
        writer.add_uint32("general.file_type", FILE_TYPES[file_type][1])
        for key, value in chosen.kv.items():  # gguf_set_val_*: removed, then appended
            if isinstance(value, str):
                writer.add_string(key, value)
            else:
                writer.add_uint32(key, value)
        planned = list(zip(infos, types, strict=True))
        for info, new_type in track(planned, f"writing {out.name}", total=len(planned)):
            data = _tensor_bytes(gguf, by_name[info.name], info, new_type, chosen)
            # byte shape in numpy order (row length last, in bytes), with the source's dims
            byte_shape = (
                *reversed(info.shape[1:]),
                data.size // max(1, int(np.prod(info.shape[1:]))),
            )
            data = data.reshape(byte_shape)
            writer.add_tensor(
                info.name, data, raw_shape=byte_shape, raw_dtype=gguf.GGMLQuantizationType[new_type]
            )
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    n_params = sum(int(np.prod(i.shape)) for i in infos)
    return ExportResult(
        path=out, input_bytes=src.stat().st_size, output_bytes=out.stat().st_size,
        n_params=n_params, type_counts=dict(Counter(types)),
        tensor_types=dict(zip(order, types, strict=True)),
    )  # fmt: skip
