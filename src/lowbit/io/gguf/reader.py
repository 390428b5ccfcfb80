"""A validating GGUF reader over a memory map.

The header is parsed with ``struct`` from the mapped bytes, and every count and length is
checked against the bytes that remain before anything is read or allocated: a string, array,
key-value or tensor count of 2**62 fails at once instead of looping or allocating. Then the
tensor infos are checked as llama.cpp's loader does: known type, 1 to 4 dimensions, each
positive, the first a multiple of the type's block size, aligned offsets, data inside the
file, no two tensors overlapping.

Block sizes and bytes per block come from gguf-py (``gguf.constants.GGML_QUANT_SIZES``),
which is imported lazily (``pip install 'lowbit[gguf]'``).

Layout (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md): magic "GGUF", version
(uint32, 2 or 3), tensor count and KV count (uint64), the KV pairs, the tensor infos (name,
n_dims, dims, type, offset), padding to ``general.alignment`` (default 32), tensor data.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from math import prod
from pathlib import Path
from typing import Any

import numpy as np

from lowbit.errors import InvalidInputError, require

MAGIC = b"GGUF"
VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
_INT64_MAX = 2**63 - 1
# Value types: struct format of the scalars; 7 is bool, 8 string, 9 array.
_SCALARS = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}
_STRING, _ARRAY = 8, 9
_NUMPY = {k: np.dtype("<" + v) if v != "?" else np.dtype(bool) for k, v in _SCALARS.items()}
# Fewest bytes one item can take: a string is its 8-byte length, an array its type and count.
_MIN_ITEM = {_STRING: 8, _ARRAY: 12, **{k: struct.calcsize(v) for k, v in _SCALARS.items()}}
_MIN_KV = 8 + 4 + 1  # key length, value type, a 1-byte value
_MIN_TENSOR_INFO = 8 + 4 + 8 + 4 + 8  # name length, n_dims, one dim, type, offset


def damaged(path: Path, problem: str) -> InvalidInputError:
    """The error for a GGUF file that cannot be read as it is."""
    return InvalidInputError(
        f"{path} is not a readable GGUF file ({problem}); it may be truncated, damaged or not "
        "a GGUF file at all: download or convert it again (e.g. with llama.cpp's "
        "convert_hf_to_gguf.py)"
    )


@dataclass(frozen=True)
class GGMLType:
    """One ggml tensor type: ``block_size`` elements are stored in ``type_size`` bytes."""

    id: int
    name: str
    block_size: int
    type_size: int

    @property
    def bits_per_weight(self) -> float:
        return self.type_size * 8 / self.block_size


def ggml_types() -> dict[int, GGMLType]:
    """Every ggml type gguf-py knows, by id (F32, F16, Q4_0, ..., with their block sizes)."""
    gguf = require("gguf", "gguf")
    return {
        int(t): GGMLType(int(t), t.name, int(b), int(s))
        for t, (b, s) in gguf.constants.GGML_QUANT_SIZES.items()
    }


@dataclass(frozen=True)
class GGUFTensor:
    """A tensor's info, checked. ``ne`` is ggml's order (fastest dimension first), ``shape``
    numpy's (``ne`` reversed); ``offset`` is absolute in the file."""

    name: str
    type: GGMLType
    ne: tuple[int, ...]
    offset: int
    n_bytes: int

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(reversed(self.ne))

    @property
    def n_elements(self) -> int:
        return prod(self.ne)

    @property
    def bits_per_weight(self) -> float:
        return self.n_bytes * 8 / self.n_elements


@dataclass
class GGUFFile:
    """A parsed GGUF file: metadata (numeric arrays are read-only numpy views of the map),
    tensor infos in file order, and the memory map their data lives in."""

    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: list[GGUFTensor]
    alignment: int
    data_offset: int
    file_size: int
    _map: Any = field(repr=False, default=None)

    def raw(self, tensor: GGUFTensor) -> np.ndarray:
        """The tensor's stored bytes (a read-only uint8 view of the map, no copy)."""
        return np.frombuffer(self._map, np.uint8, tensor.n_bytes, tensor.offset)

    def release(self, tensor: GGUFTensor) -> None:
        """Drop the tensor's pages of the memory map from this process (they stay in the
        page cache): read pages of a map count as resident memory until then."""
        start = tensor.offset // mmap.PAGESIZE * mmap.PAGESIZE
        if hasattr(self._map, "madvise"):
            self._map.madvise(mmap.MADV_DONTNEED, start, tensor.offset + tensor.n_bytes - start)

    def tensor(self, name: str) -> GGUFTensor:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)

    def dequantize(self, tensor: GGUFTensor) -> np.ndarray:
        """The tensor as float32 in numpy's ``shape`` (gguf-py's dequantization)."""
        gguf = require("gguf", "gguf")
        data = self.raw(tensor).reshape(*tensor.shape[:-1], -1)
        out = gguf.quants.dequantize(data, gguf.GGMLQuantizationType(tensor.type.id))
        return np.asarray(out, dtype=np.float32).reshape(tensor.shape)


class _Cursor:
    """Reads little-endian values from the map, never past its end."""

    def __init__(self, path: Path, buf: Any, size: int) -> None:
        self.path, self.buf, self.size, self.pos = path, buf, size, 0

    def need(self, n: int, what: str) -> None:
        if n > self.size - self.pos:
            raise damaged(
                self.path,
                f"{what} needs {n} bytes at byte {self.pos}, but the file ends at byte {self.size}",
            )

    def scalar(self, fmt: str, what: str) -> Any:
        n = struct.calcsize(fmt)
        self.need(n, what)
        (value,) = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += n
        return value

    def string(self, what: str) -> str:
        n = self.scalar("Q", f"the length of {what}")
        self.need(n, f"{what} ({n} bytes)")
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise damaged(self.path, f"{what} is not UTF-8") from None

    def count(self, what: str, min_item: int) -> int:
        n = self.scalar("Q", f"the {what} count")
        if n * min_item > self.size - self.pos:
            raise damaged(
                self.path,
                f"it declares {n} {what}, more than the {self.size - self.pos} bytes left can hold",
            )
        return n

    def value(self, vtype: int, what: str, depth: int = 0) -> Any:
        if vtype in _SCALARS:
            return self.scalar(_SCALARS[vtype], what)
        if vtype == _STRING:
            return self.string(what)
        if vtype != _ARRAY or depth > 0:  # llama.cpp reads no arrays of arrays
            kind = "nested array" if vtype == _ARRAY else f"value type {vtype}"
            raise damaged(self.path, f"{what} has an unknown {kind}")
        etype = self.scalar("I", f"the element type of {what}")
        if etype not in _MIN_ITEM or etype == _ARRAY:
            raise damaged(self.path, f"{what} is an array of unknown type {etype}")
        n = self.count(f"elements of {what}", _MIN_ITEM[etype])
        if etype in _NUMPY:
            arr = np.frombuffer(self.buf, _NUMPY[etype], n, self.pos)
            self.pos += arr.nbytes
            return arr
        return [self.string(f"element {i} of {what}") for i in range(n)]


def read_gguf(path: str | Path) -> GGUFFile:
    """Parse and check a GGUF file's header; its tensor data stays in the memory map.

    Raises:
        InvalidInputError: the file is not GGUF, is truncated, or its header is damaged or
            inconsistent (the message names which and how).
        MissingDependencyError: ``gguf`` (the type table) is not installed.
    """
    path = Path(path)
    types = ggml_types()
    try:
        with path.open("rb") as f:
            size = path.stat().st_size
            if size < 24:
                raise damaged(path, f"only {size} bytes, shorter than the 24-byte GGUF header")
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as exc:
        raise InvalidInputError(
            f"cannot read {path}: {exc.strerror or exc}; check the path and its permissions"
        ) from None
    cur = _Cursor(path, buf, size)
    magic = bytes(buf[:4])
    if magic != MAGIC:
        raise damaged(path, f"it starts with {magic!r}, not the GGUF magic b'GGUF'")
    cur.pos = 4
    version = cur.scalar("I", "the version")
    if version not in VERSIONS:
        raise damaged(
            path, f"GGUF version {version} is not supported (lowbit reads versions 2 and 3)"
        )
    n_tensors = cur.scalar("Q", "the tensor count")
    n_kv = cur.count("key-value pairs", _MIN_KV)
    if n_tensors * _MIN_TENSOR_INFO > size - cur.pos:
        raise damaged(path, f"it declares {n_tensors} tensors, more than the file can hold")
    metadata: dict[str, Any] = {}
    for i in range(n_kv):
        key = cur.string(f"key {i}")
        vtype = cur.scalar("I", f"the value type of {key!r}")
        if key in metadata:
            raise damaged(path, f"key {key!r} appears twice")
        metadata[key] = cur.value(vtype, f"the value of {key!r}")
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if type(alignment) is not int or alignment <= 0 or alignment & (alignment - 1):
        raise damaged(path, f"general.alignment is {alignment!r}, not a power of two")
    infos = []
    names: set[str] = set()
    for i in range(n_tensors):
        name = cur.string(f"the name of tensor {i}")
        if name in names:
            raise damaged(path, f"tensor {name!r} appears twice")
        names.add(name)
        n_dims = cur.scalar("I", f"the dimension count of {name!r}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise damaged(path, f"tensor {name!r} has {n_dims} dimensions (ggml allows 1 to 4)")
        ne = tuple(cur.scalar("Q", f"dimension {d} of {name!r}") for d in range(n_dims))
        type_id = cur.scalar("I", f"the type of {name!r}")
        offset = cur.scalar("Q", f"the data offset of {name!r}")
        infos.append((name, ne, type_id, offset))
    data_offset = -(-cur.pos // alignment) * alignment
    tensors = [_check_tensor(path, types, alignment, data_offset, size, *info) for info in infos]
    end = data_offset
    for t in sorted(tensors, key=lambda t: t.offset):
        if t.offset < end:
            raise damaged(path, f"tensor {t.name!r} overlaps the tensor before it")
        end = t.offset + t.n_bytes
    return GGUFFile(path, version, metadata, tensors, alignment, data_offset, size, buf)


def _check_tensor(
    path: Path,
    types: dict[int, GGMLType],
    alignment: int,
    data_offset: int,
    size: int,
    name: str,
    ne: tuple[int, ...],
    type_id: int,
    offset: int,
) -> GGUFTensor:
    if type_id not in types:
        raise damaged(path, f"tensor {name!r} has unknown ggml type id {type_id}")
    gtype = types[type_id]
    if any(d <= 0 or d > _INT64_MAX for d in ne):
        shown = [d - 2**64 if d > _INT64_MAX else d for d in ne]
        raise damaged(path, f"tensor {name!r} has shape {shown}: every dimension must be > 0")
    n = prod(ne)
    if n > _INT64_MAX:
        raise damaged(path, f"tensor {name!r} of shape {list(ne)} has more than 2**63 elements")
    if ne[0] % gtype.block_size:
        raise damaged(
            path,
            f"tensor {name!r}: its row of {ne[0]} elements is not a whole number of "
            f"{gtype.name} blocks of {gtype.block_size}",
        )
    if offset % alignment:
        raise damaged(
            path, f"tensor {name!r} starts at offset {offset}, not a multiple of {alignment}"
        )
    n_bytes = n // gtype.block_size * gtype.type_size
    begin = data_offset + offset
    if begin + n_bytes > size:
        raise damaged(
            path,
            f"tensor {name!r} ({gtype.name}, shape {list(ne)}) needs bytes "
            f"{begin}..{begin + n_bytes} but the file has {size}",
        )
    return GGUFTensor(name, gtype, ne, begin, n_bytes)


# Arrays longer than this are summarized (tokenizer vocabularies, merges).
_SHOWN_ITEMS = 8


def summarize_value(value: Any) -> Any:
    """A metadata value as JSON: long arrays become "[N x type] first, items, ..."."""
    if isinstance(value, np.ndarray):
        items = value[:_SHOWN_ITEMS].tolist()
        if len(value) <= _SHOWN_ITEMS:
            return items
        return f"[{len(value)} x {value.dtype}] {', '.join(map(str, items))}, ..."
    if isinstance(value, list):
        if len(value) <= _SHOWN_ITEMS:
            return value
        return f"[{len(value)} x str] {', '.join(map(repr, value[:_SHOWN_ITEMS]))}, ..."
    return value


def describe(gguf_file: GGUFFile) -> dict[str, Any]:
    """A JSON-able description: file facts, the metadata summary, totals by type, tensors."""
    meta = gguf_file.metadata
    arch = meta.get("general.architecture")
    by_type: dict[str, dict[str, int]] = {}
    for t in gguf_file.tensors:
        row = by_type.setdefault(t.type.name, {"tensors": 0, "elements": 0, "bytes": 0})
        row["tensors"] += 1
        row["elements"] += t.n_elements
        row["bytes"] += t.n_bytes
    n_elements = sum(t.n_elements for t in gguf_file.tensors)
    n_bytes = sum(t.n_bytes for t in gguf_file.tensors)
    tokens = meta.get("tokenizer.ggml.tokens")
    return {
        "path": str(gguf_file.path),
        "version": gguf_file.version,
        "file_bytes": gguf_file.file_size,
        "alignment": gguf_file.alignment,
        "summary": {
            "architecture": arch,
            "name": meta.get("general.name"),
            "context_length": meta.get(f"{arch}.context_length"),
            "block_count": meta.get(f"{arch}.block_count"),
            "embedding_length": meta.get(f"{arch}.embedding_length"),
            "file_type": meta.get("general.file_type"),
            "tokenizer_model": meta.get("tokenizer.ggml.model"),
            "vocab_size": len(tokens) if tokens is not None else None,
            "n_kv": len(meta),
            "n_tensors": len(gguf_file.tensors),
            "n_elements": n_elements,
            "tensor_bytes": n_bytes,
            "bits_per_weight": n_bytes * 8 / n_elements if n_elements else None,
        },
        "by_type": by_type,
        "metadata": {k: summarize_value(v) for k, v in meta.items()},
        "tensors": [
            {
                "name": t.name,
                "type": t.type.name,
                "shape": list(t.shape),
                "elements": t.n_elements,
                "bytes": t.n_bytes,
                "bits_per_weight": t.bits_per_weight,
            }
            for t in gguf_file.tensors
        ],
    }
