"""safetensors without holding every tensor in memory: a writer that takes tensors one at a
time, and a reader that reads one tensor at a time.

The writer appends each tensor's bytes to a data file beside the destination and, on
``close``, writes the header safetensors itself would write and copies the data after it in
safetensors' order (in the kernel, ``os.copy_file_range``): the file is byte-identical to
``safetensors.torch.save_file`` of the same tensors (tests/test_io/test_safetensors_stream.py),
so every tool that reads safetensors reads it, and a streamed save equals an in-memory one.

The reader reads a tensor's byte range into its own buffer instead of a memory map: pages of a
map count in the process's resident memory until it is closed, and the point of streaming is
a bounded resident set.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from lowbit.errors import InvalidInputError
from lowbit.io.inspect import read_safetensors_entries

# safetensors' dtype names for the torch dtypes a lowbit save or a checkpoint holds.
DTYPE_NAMES = {
    torch.bool: "BOOL",
    torch.uint8: "U8",
    torch.int8: "I8",
    torch.int16: "I16",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int32: "I32",
    torch.float32: "F32",
    torch.float64: "F64",
    torch.int64: "I64",
}
TORCH_DTYPES = {name: dtype for dtype, name in DTYPE_NAMES.items()}
_COPY_CHUNK = 64 << 20


@functools.cache
def _dtype_rank() -> dict[str, int]:
    """Where safetensors puts each dtype in the data section (it writes larger alignments
    first, then names in byte order), read off safetensors itself rather than restated."""
    import safetensors.torch

    probe = {f"t{i}": torch.zeros(1, dtype=d) for i, d in enumerate(DTYPE_NAMES)}
    raw = safetensors.torch.save(probe)
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    placed = sorted((e["data_offsets"][0], e["dtype"]) for k, e in header.items() if k[0] == "t")
    return {dtype: rank for rank, (_, dtype) in enumerate(placed)}


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of ``tensor`` (made contiguous, on the CPU)."""
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else memoryview(b"")


class SafetensorsStreamWriter:
    """Builds ``path`` from tensors added one at a time; nothing is kept but their offsets.

    ``add`` each tensor (names unique), then ``close(metadata)`` once. The data file
    ``path`` + ".data" exists only in between; write inside an atomic folder so a crash
    leaves neither.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._data_path = self.path.with_name(self.path.name + ".data")
        self._data = self._data_path.open("wb")
        self._entries: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
        self._offset = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Append ``tensor`` under ``name``."""
        if name in self._entries:
            raise ValueError(f"tensor {name!r} added twice")
        dtype = DTYPE_NAMES.get(tensor.dtype)
        if dtype is None:
            raise InvalidInputError(f"cannot store {name} of dtype {tensor.dtype} in safetensors")
        data = tensor_bytes(tensor)
        self._data.write(data)
        self._entries[name] = (dtype, tuple(tensor.shape), self._offset, data.nbytes)
        self._offset += data.nbytes

    def close(self, metadata: dict[str, str] | None = None) -> None:
        """Write ``path``: safetensors' header, then every tensor's bytes in its order."""
        self._data.close()
        rank = _dtype_rank()
        order = sorted(self._entries, key=lambda n: (rank[self._entries[n][0]], n.encode()))
        header: dict[str, object] = {"__metadata__": metadata} if metadata else {}
        begin = 0
        for name in order:
            dtype, shape, _, size = self._entries[name]
            header[name] = {
                "dtype": dtype,
                "shape": list(shape),
                "data_offsets": [begin, begin + size],
            }
            begin += size
        raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        raw += b" " * (-len(raw) % 8)
        with self._data_path.open("rb") as src, self.path.open("wb") as dst:
            dst.write(len(raw).to_bytes(8, "little") + raw)
            dst.flush()
            for name in order:
                _, _, offset, size = self._entries[name]
                _copy_range(src.fileno(), dst.fileno(), offset, size)
        self._data_path.unlink()


def _copy_range(src: int, dst: int, offset: int, size: int) -> None:
    """Append ``size`` bytes of ``src`` from ``offset`` to ``dst`` (in the kernel where the
    system can, else through a bounded buffer)."""
    while size:
        try:
            done = os.copy_file_range(src, dst, min(size, _COPY_CHUNK), offset)
        except (AttributeError, OSError):
            done = os.write(dst, os.pread(src, min(size, _COPY_CHUNK), offset))
        if done == 0:
            raise OSError(f"short copy: {size} bytes left")
        offset += done
        size -= done


@dataclass(frozen=True)
class StoredTensor:
    """Where a tensor's bytes are: file, dtype name, shape, absolute byte range."""

    path: Path
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


class SafetensorsFiles:
    """The tensors of one or more safetensors files (a model's shards), read one at a time."""

    def __init__(self, paths: list[Path]) -> None:
        self.tensors: dict[str, StoredTensor] = {}
        for path in paths:
            entries, data_start = read_safetensors_entries(path)
            for name, dtype, shape, (begin, end) in entries:
                if name in self.tensors:
                    raise InvalidInputError(
                        f"tensor {name!r} is in both {self.tensors[name].path.name} and "
                        f"{path.name}; keep one copy of the weights in the folder"
                    )
                self.tensors[name] = StoredTensor(
                    path, dtype, shape, data_start + begin, data_start + end
                )

    def read(self, name: str) -> torch.Tensor:
        """A new tensor holding ``name`` (its byte range read into a buffer, no memory map)."""
        stored = self.tensors[name]
        dtype = TORCH_DTYPES.get(stored.dtype)
        if dtype is None:
            raise InvalidInputError(
                f"{stored.path.name}: tensor {name!r} is {stored.dtype}, which lowbit cannot read"
            )
        size = stored.end - stored.begin
        buffer = bytearray(size)
        view, got = memoryview(buffer), 0
        with stored.path.open("rb", buffering=0) as f:
            f.seek(stored.begin)
            while got < size:
                n = f.readinto(view[got:])
                if not n:
                    raise InvalidInputError(
                        f"{stored.path} is shorter than its header says; download it again"
                    )
                got += n
        if not size:
            return torch.empty(stored.shape, dtype=dtype)
        return torch.frombuffer(buffer, dtype=dtype).reshape(stored.shape)
