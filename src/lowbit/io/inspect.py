"""Count a model's parameters from its files' headers, without loading weights.

Reads safetensors files (the 8-byte little-endian header length, then the JSON header of
names, dtypes, shapes and data offsets), GGUF files (through lowbit.io.gguf's validating reader,
which memory-maps the file and reads only the tensor infos here), and Hugging Face folders (their
*.safetensors files). Pickled checkpoints (pytorch_model.bin, *.pt) are never opened:
unpickling can run arbitrary code.

Counts are elements, not bytes: a Q4_0 GGUF tensor of shape (4096, 4096) counts 16.8M
parameters. A safetensors file that already holds packed low-bit codes counts its stored
elements (bytes of packed codes), which is fewer than the weights they stand for.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from math import prod
from pathlib import Path

from lowbit.errors import InvalidInputError, UnsupportedFormatError

logger = logging.getLogger(__name__)

# safetensors refuses headers above 100 MB; a larger length means a damaged or foreign file.
_MAX_SAFETENSORS_HEADER = 100_000_000
# Bits per element of every safetensors dtype (the safetensors crate's Dtype::bitsize).
_SAFETENSORS_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F4": 4,
    "F6_E2M3": 6, "F6_E3M2": 6, "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32,
    "U32": 32, "F32": 32, "I64": 64, "U64": 64, "F64": 64, "C64": 64,
}  # fmt: skip
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_CONVERT_HINT = (
    "pickled checkpoints are not read because unpickling can run arbitrary code; convert the "
    "model to safetensors first, e.g. with transformers: "
    "AutoModel.from_pretrained(folder).save_pretrained(out_folder, safe_serialization=True)"
)


@dataclass(frozen=True)
class ModelFileInfo:
    """What a model's files hold: parameter and tensor counts, dtypes, and size on disk.

    Attributes:
        path: the file or folder that was inspected.
        format: "safetensors" or "gguf".
        n_params: total elements of all tensors (parameters as stored).
        n_tensors: number of tensors.
        bytes_on_disk: total size of the weight files read (headers included).
        files: the weight files read, sorted.
        dtypes: elements per stored dtype name ("F32", "BF16", "Q4_0", ...).
    """

    path: Path
    format: str
    n_params: int
    n_tensors: int
    bytes_on_disk: int
    files: tuple[Path, ...]
    dtypes: dict[str, int] = field(default_factory=dict, hash=False)

    @property
    def bits_per_weight(self) -> float:
        """Average bits on disk per parameter (headers and metadata included)."""
        return self.bytes_on_disk * 8 / self.n_params


def _damaged(path: Path, problem: str, kind: str) -> InvalidInputError:
    return InvalidInputError(
        f"{path} is not a readable {kind} file ({problem}); it may be truncated or not a "
        f"{kind} file at all: download or save it again"
    )


def read_safetensors_header(path: Path) -> list[tuple[str, str, tuple[int, ...]]]:
    """(name, dtype, shape) of every tensor in a safetensors file, in file order, checked
    against the bytes on disk before anything is allocated: each shape times its dtype's
    size is its byte range, and the ranges tile the data section exactly (as safetensors
    itself requires), so no header can claim more data than the file holds.

    Raises:
        InvalidInputError: the file is truncated, or its header is damaged or lies.
    """
    return [(name, dtype, shape) for name, dtype, shape, _ in read_safetensors_entries(path)[0]]


def read_safetensors_entries(
    path: Path,
) -> tuple[list[tuple[str, str, tuple[int, ...], tuple[int, int]]], int]:
    """As read_safetensors_header, with each tensor's byte range in the data section, and
    where that section starts in the file."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise _damaged(
                path, f"only {size} bytes, shorter than the 8-byte header length", "safetensors"
            )
        n = int.from_bytes(head, "little")
        if n > min(size - 8, _MAX_SAFETENSORS_HEADER):
            raise _damaged(
                path, f"header length {n} exceeds the file's {size} bytes", "safetensors"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _damaged(path, f"header is not valid JSON: {exc}", "safetensors") from None
    if not isinstance(header, dict):
        raise _damaged(path, "header is not a JSON object", "safetensors")
    tensors = [
        _header_entry(path, name, entry) for name, entry in header.items() if name != "__metadata__"
    ]
    data_len, covered = size - 8 - n, 0
    for name, _, _, (begin, end) in sorted(tensors, key=lambda t: t[3]):
        if begin != covered or end > data_len:
            raise _damaged(
                path,
                f"tensor {name!r} spans bytes {begin}..{end}, but the data section has "
                f"{data_len} bytes and the tensors before it end at byte {covered}",
                "safetensors",
            )
        covered = end
    if covered != data_len:
        raise _damaged(
            path, f"its tensors cover {covered} of the {data_len} data bytes", "safetensors"
        )
    return tensors, 8 + n


def _header_entry(
    path: Path, name: str, entry: object
) -> tuple[str, str, tuple[int, ...], tuple[int, int]]:
    """One header entry, checked: known dtype, whole shape, byte range = shape x dtype size."""
    try:
        dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]  # type: ignore[index]
        valid = (
            dtype in _SAFETENSORS_BITS
            and isinstance(shape, list)
            and all(type(d) is int and d >= 0 for d in shape)
            and type(begin) is int
            and type(end) is int
            and 0 <= begin <= end
        )
    except (KeyError, TypeError, ValueError):
        valid = False
    if not valid:
        raise _damaged(path, f"bad header entry for tensor {name!r}", "safetensors")
    if prod(shape) * _SAFETENSORS_BITS[dtype] != (end - begin) * 8:
        raise _damaged(
            path,
            f"tensor {name!r} claims shape {shape} of {dtype} but spans {end - begin} bytes",
            "safetensors",
        )
    return name, dtype, tuple(shape), (begin, end)


def _inspect_safetensors(path: Path, files: list[Path]) -> ModelFileInfo:
    n_params = n_tensors = 0
    dtypes: dict[str, int] = {}
    for file in files:
        for _, dtype, shape in read_safetensors_header(file):
            numel = prod(shape)
            n_params += numel
            n_tensors += 1
            dtypes[dtype] = dtypes.get(dtype, 0) + numel
    return ModelFileInfo(
        path=path,
        format="safetensors",
        n_params=n_params,
        n_tensors=n_tensors,
        bytes_on_disk=sum(f.stat().st_size for f in files),
        files=tuple(files),
        dtypes=dtypes,
    )


def read_gguf_header(path: Path) -> list[tuple[str, int]]:
    """(type name, elements) of every tensor in a GGUF file, checked against the file by
    lowbit.io.gguf's validating reader (memory-mapped; headers only).

    Raises:
        InvalidInputError: the file is truncated or its header is damaged.
        MissingDependencyError: the ``gguf`` package (its type table) is not installed.
    """
    from lowbit.io.gguf import read_gguf

    return [(t.type.name, t.n_elements) for t in read_gguf(path).tensors]


def _inspect_gguf(path: Path) -> ModelFileInfo:
    tensors = read_gguf_header(path)
    dtypes: dict[str, int] = {}
    for dtype, numel in tensors:
        dtypes[dtype] = dtypes.get(dtype, 0) + numel
    return ModelFileInfo(
        path=path,
        format="gguf",
        n_params=sum(numel for _, numel in tensors),
        n_tensors=len(tensors),
        bytes_on_disk=path.stat().st_size,
        files=(path,),
        dtypes=dtypes,
    )


def folder_safetensors(folder: Path) -> list[Path]:
    """The safetensors files of a Hugging Face folder: the shards its index names, else all.

    The index matters where a repository ships the same weights twice (Mistral's
    consolidated.safetensors beside model-0000x-of-0000n.safetensors).
    """
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
            raise _damaged(index, "no valid 'weight_map'", "safetensors index") from None
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise InvalidInputError(
                f"{index} names shards that are not in {folder}: {', '.join(missing)}; "
                "download the missing shards"
            )
        return [folder / n for n in names]
    files = sorted(folder.glob("*.safetensors"))
    if files:
        return files
    if any(p.suffix in _PICKLE_SUFFIXES for p in folder.iterdir()):
        raise UnsupportedFormatError(f"{folder} holds no *.safetensors files; {_CONVERT_HINT}")
    ggufs = sorted(folder.glob("*.gguf"))
    if ggufs:
        raise InvalidInputError(
            f"{folder} holds GGUF files but no safetensors; pass one GGUF file, e.g. {ggufs[0]}"
        )
    raise InvalidInputError(
        f"{folder} holds no model weights (*.safetensors); pass a safetensors file, a GGUF file "
        "or a Hugging Face model folder"
    )


def count_parameters(path: str | Path) -> ModelFileInfo:
    """Count the parameters of a model file or folder from headers only (weights are not read).

    Args:
        path: a ``.safetensors`` file, a ``.gguf`` file, or a Hugging Face model folder
            (its ``*.safetensors`` files, following ``model.safetensors.index.json``).

    Raises:
        InvalidInputError: the path does not exist, holds no tensors, or a file is damaged.
        UnsupportedFormatError: an unknown file type, or a pickled checkpoint.
        MissingDependencyError: a GGUF file without the ``gguf`` package installed.
    """
    path = Path(path)
    if not path.exists():
        raise InvalidInputError(f"no such file or folder: {path}; check the path")
    if path.is_dir():
        info = _inspect_safetensors(path, folder_safetensors(path))
    elif path.suffix == ".safetensors":
        info = _inspect_safetensors(path, [path])
    elif path.suffix == ".gguf":
        info = _inspect_gguf(path)
    elif path.suffix in _PICKLE_SUFFIXES:
        raise UnsupportedFormatError(f"{path} is a pickled checkpoint; {_CONVERT_HINT}")
    else:
        raise UnsupportedFormatError(
            f"unknown model file type {path.suffix or '(no extension)'!r} for {path}; pass a "
            ".safetensors file, a .gguf file or a Hugging Face model folder"
        )
    if info.n_params == 0:
        raise InvalidInputError(
            f"{path} holds no parameters ({info.n_tensors} tensors); pass a model's weight file"
        )
    logger.debug("%s: %d parameters in %d tensors", path, info.n_params, info.n_tensors)
    return info
