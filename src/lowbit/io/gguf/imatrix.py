"""llama.cpp's importance-matrix files, read as llama-quantize reads them.

``read_imatrix(path)`` gives an :class:`Imatrix`: {GGUF tensor name: float32 importance (K,)},
the ``quant_weights``
llama-quantize hands to ggml (tools/quantize/quantize.cpp ``load_imatrix`` over
common/imatrix-loader.cpp ``common_imatrix_load``, llama.cpp 0c1e570). Two layouts:

- GGUF (what llama-imatrix writes by default): per tensor ``<name>.in_sum2`` (F32, Σx² per
  input column, ne = (K, n_mat)) and ``<name>.counts`` (F32, rows seen, ne = (1, n_mat)),
  plus ``imatrix.datasets``, ``imatrix.chunk_count`` and ``imatrix.chunk_size``, which
  llama-quantize requires. Counts are rounded (C ``lround``), and the importance is
  in_sum2 / float(count) in float32, or 1 where a count is 0.
- legacy ``.dat`` (``--output-format dat``): int32 entry count; per entry int32 name length,
  the name, int32 ncall, int32 value count, float32 values (already mean x² times ncall);
  optional trailing chunk count and dataset name. The importance is values / float(ncall)
  (the values as stored when ncall <= 0).

The GGUF layout is parsed by lowbit's validating reader; the legacy one by a cursor that checks
every length against the bytes left before reading, so a hostile count allocates nothing and a
truncated file is one InvalidInputError. Non-finite values are refused, as llama-quantize does.
"""

from __future__ import annotations

import logging
import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lowbit.errors import InvalidInputError
from lowbit.io.gguf.reader import MAGIC, read_gguf

logger = logging.getLogger(__name__)

SUM_SUFFIX = ".in_sum2"
COUNT_SUFFIX = ".counts"
# KV keys llama-quantize needs in a GGUF imatrix (imatrix-loader.h; load_imatrix exits without)
METADATA_KEYS = ("imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size")


def _bad(path: Path, problem: str) -> InvalidInputError:
    return InvalidInputError(
        f"{path} is not a usable llama.cpp imatrix file ({problem}); make it again with "
        "llama-imatrix, or let lowbit compute the importance (--calib instead of --imatrix)"
    )


@dataclass
class Imatrix:
    """An imatrix file as llama-quantize loads it: importance by GGUF tensor name (float32,
    K * n_mat values), the calibration datasets named in it and its chunk count (0: none)."""

    importance: dict[str, torch.Tensor]
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0


def read_imatrix(path: str | Path) -> Imatrix:
    """The importance of every tensor an imatrix file covers, as llama-quantize computes it.

    Args:
        path: a llama-imatrix output, GGUF (default) or legacy ``.dat``.
    Returns: an Imatrix ({"blk.0.attn_q.weight": float32 tensor (K * n_mat,), ...}, ...).
    Raises:
        InvalidInputError: missing, damaged, truncated or inconsistent file, or non-finite
            values (one line naming the file and the problem).
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"--imatrix {str(path)!r} is not a file; check the path")
    with path.open("rb") as f:
        magic = f.read(len(MAGIC))
    values, datasets, chunks = _from_gguf(path) if magic == MAGIC else _from_legacy(path)
    for name, v in values.items():
        if not np.isfinite(v).all():
            raise _bad(path, f"{name} holds non-finite values; llama-quantize refuses them too")
    logger.info("imatrix %s: %d entries, %d chunks of %s", path, len(values), chunks, datasets)
    return Imatrix({n: torch.from_numpy(v) for n, v in values.items()}, datasets, chunks)


def _f32(gguf_file, tensor, path: Path) -> np.ndarray:
    if tensor.type.name != "F32":
        raise _bad(path, f"tensor {tensor.name} is {tensor.type.name}; sums and counts are F32")
    return np.frombuffer(gguf_file.raw(tensor), dtype="<f4")


def _lround(x: np.ndarray) -> np.ndarray:
    """C lround: to nearest, halves away from zero."""
    return (np.sign(x) * np.floor(np.abs(x.astype(np.float64)) + 0.5)).astype(np.int64)


def _from_gguf(path: Path) -> tuple[dict[str, np.ndarray], list[str], int]:
    g = read_gguf(path)
    missing = [k for k in METADATA_KEYS if k not in g.metadata]
    if missing:
        raise _bad(path, f"no {', '.join(missing)}: llama-quantize requires this metadata")
    pairs: dict[str, dict[str, object]] = {}
    for t in g.tensors:
        for suffix in (SUM_SUFFIX, COUNT_SUFFIX):
            if t.name.endswith(suffix) and len(t.name) > len(suffix):
                pairs.setdefault(t.name[: -len(suffix)], {})[suffix] = t
    if not pairs:
        raise _bad(path, "it holds no <tensor>.in_sum2 / <tensor>.counts pairs")
    out = {}
    for name, pair in sorted(pairs.items()):
        if len(pair) != 2:
            raise _bad(path, f"{name} has in_sum2 or counts but not both")
        sums = _f32(g, pair[SUM_SUFFIX], path)
        counts = _lround(_f32(g, pair[COUNT_SUFFIX], path))
        if sums.size % counts.size:
            raise _bad(path, f"{name}: {sums.size} sums do not split into {counts.size} counts")
        # load_imatrix: per matrix (expert) j, sums / (float) count, or 1 where count is 0
        per = sums.reshape(counts.size, -1)
        count = counts.astype(np.float32)[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            out[name] = np.where(count > 0, per / count, np.float32(1)).astype(np.float32).ravel()
    datasets = g.metadata["imatrix.datasets"]
    datasets = [str(d) for d in datasets] if isinstance(datasets, list) else []
    chunks = g.metadata["imatrix.chunk_count"]
    return out, datasets, chunks if isinstance(chunks, int) else 0


class _Legacy:
    """A cursor over a legacy imatrix: every read checks the bytes left first."""

    def __init__(self, path: Path, buf) -> None:
        self.path, self.buf, self.pos = path, buf, 0

    def take(self, n: int, what: str) -> bytes:
        left = len(self.buf) - self.pos
        if n > left:
            raise _bad(self.path, f"truncated: {what} needs {n} bytes, {left} left at {self.pos}")
        self.pos += n
        return self.buf[self.pos - n : self.pos]

    def int32(self, what: str) -> int:
        return struct.unpack("<i", self.take(4, what))[0]


def _from_legacy(path: Path) -> tuple[dict[str, np.ndarray], list[str], int]:
    if path.stat().st_size == 0:
        raise _bad(path, "the file is empty")
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        cur = _Legacy(path, buf)
        n_entries = cur.int32("the entry count")
        if n_entries < 1:
            raise _bad(path, f"it declares {n_entries} entries (neither GGUF nor legacy .dat?)")
        out: dict[str, np.ndarray] = {}
        for i in range(n_entries):
            length = cur.int32(f"the name length of entry {i}")
            if length < 1:
                raise _bad(path, f"entry {i} has a name length of {length}")
            try:
                name = cur.take(length, f"the name of entry {i}").decode("utf-8")
            except UnicodeDecodeError:
                raise _bad(path, f"the name of entry {i} is not UTF-8") from None
            ncall = cur.int32(f"the call count of {name}")
            nval = cur.int32(f"the value count of {name}")
            if nval < 1:
                raise _bad(path, f"{name} declares {nval} values")
            if name in out:
                raise _bad(path, f"{name} appears twice")
            sums = np.frombuffer(cur.take(4 * nval, f"the {nval} values of {name}"), "<f4")
            # load_imatrix (legacy): the stored values are mean x² times ncall
            out[name] = (sums / np.float32(ncall) if ncall > 0 else sums).astype(np.float32)
        # optional trailer, read leniently as llama.cpp does: chunk count, dataset name
        chunks, datasets = 0, []
        if len(buf) - cur.pos >= 4:
            chunks = cur.int32("the chunk count")
        if len(buf) - cur.pos >= 4:
            length = cur.int32("the dataset name length")
            if 0 < length <= len(buf) - cur.pos:
                datasets = [cur.take(length, "the dataset").decode("utf-8", "replace")]
    return out, datasets, chunks
