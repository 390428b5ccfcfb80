"""lowbit.io.gguf.imatrix: llama.cpp's importance-matrix files (GGUF and legacy .dat), read
as llama-quantize's load_imatrix normalises them; damaged files are one clear error."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

from lowbit.errors import InvalidInputError
from lowbit.io.gguf.imatrix import read_imatrix


def _gguf_imatrix(path, entries, *, metadata=True, sums_type=np.float32):
    """An imatrix as llama-imatrix's save_imatrix writes it, through gguf-py's writer."""
    gguf = pytest.importorskip("gguf")
    w = gguf.GGUFWriter(path, "llama")
    w.kv_data[0].clear()  # no general.architecture in an imatrix file
    w.add_string("general.type", "imatrix")
    if metadata:
        w.add_array("imatrix.datasets", ["calib.txt"])
        w.add_uint32("imatrix.chunk_count", 3)
        w.add_uint32("imatrix.chunk_size", 128)
    for name, (sums, counts) in entries.items():
        if sums is not None:
            w.add_tensor(f"{name}.in_sum2", np.asarray(sums, dtype=sums_type).reshape(1, -1))
        if counts is not None:
            w.add_tensor(f"{name}.counts", np.asarray(counts, np.float32).reshape(len(counts), 1))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _legacy(entries, trailer=b"") -> bytes:
    """save_imatrix_legacy's layout: count, then (name length, name, ncall, nval, values)."""
    out = struct.pack("<i", len(entries))
    for name, (ncall, values) in entries.items():
        raw = name.encode()
        out += struct.pack("<i", len(raw)) + raw + struct.pack("<ii", ncall, len(values))
        out += np.asarray(values, "<f4").tobytes()
    return out + trailer


def test_gguf_importance_is_sums_over_count_in_float32(tmp_path):
    sums = np.array([3.0, 1.0, 0.5, 7.0], np.float32)
    path = _gguf_imatrix(tmp_path / "i.gguf", {"blk.0.attn_q.weight": (sums, [3.0])})
    imatrix = read_imatrix(path)
    got = imatrix.importance["blk.0.attn_q.weight"]
    assert got.dtype == torch.float32
    assert torch.equal(got, torch.from_numpy(sums / np.float32(3)))
    assert imatrix.datasets == ["calib.txt"] and imatrix.chunk_count == 3


def test_gguf_zero_count_gives_ones_per_matrix(tmp_path):
    # two matrices (experts), the second never routed: load_imatrix stores 1 for it
    entry = (np.array([[2.0, 4.0], [5.0, 6.0]]), [2.0, 0.0])
    got = read_imatrix(_gguf_imatrix(tmp_path / "i.gguf", {"w": entry})).importance["w"]
    assert got.tolist() == [1.0, 2.0, 1.0, 1.0]


@pytest.mark.parametrize(
    ("entries", "kwargs", "message"),
    [
        ({"w": ([1.0], [1.0])}, {"metadata": False}, "imatrix.datasets"),
        ({"w": ([1.0, 2.0], None)}, {}, "not both"),
        ({"w": ([1.0, 2.0], [1.0])}, {"sums_type": np.float16}, "F32"),
        ({"w": ([1.0, float("nan")], [1.0])}, {}, "non-finite"),
    ],
)
def test_bad_gguf_imatrix_is_one_clear_error(tmp_path, entries, kwargs, message):
    path = _gguf_imatrix(tmp_path / "i.gguf", entries, **kwargs)
    with pytest.raises(InvalidInputError, match=message) as info:
        read_imatrix(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_legacy_importance_is_values_over_ncall(tmp_path):
    values = [0.3, 6.0, 9.0]
    path = tmp_path / "i.dat"
    trailer = struct.pack("<ii", 5, 4) + b"c.tx"
    path.write_bytes(_legacy({"a.weight": (3, values), "b.weight": (0, [2.5])}, trailer))
    imatrix = read_imatrix(path)
    expect = np.asarray(values, np.float32) / np.float32(3)
    assert torch.equal(imatrix.importance["a.weight"], torch.from_numpy(expect))
    assert imatrix.importance["b.weight"].tolist() == [2.5]  # ncall 0: the values as stored
    assert imatrix.chunk_count == 5 and imatrix.datasets == ["c.tx"]


def test_legacy_cut_at_any_byte_is_one_clear_error(tmp_path):
    data = _legacy({"a.weight": (2, [1.0, 2.0]), "b.weight": (2, [3.0])})
    path = tmp_path / "i.dat"
    for cut in range(len(data)):
        path.write_bytes(data[:cut])
        with pytest.raises(InvalidInputError) as info:
            read_imatrix(path)
        assert "\n" not in str(info.value), cut


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (struct.pack("<i", 0), "0 entries"),
        (struct.pack("<ii", 1, 2**31 - 1) + b"ab", "name of entry 0 needs 2147483647 bytes"),
        (struct.pack("<ii", 1, 1) + b"a" + struct.pack("<ii", 1, 2**31 - 1), "truncated"),
        (struct.pack("<ii", 1, 1) + b"a" + struct.pack("<ii", 1, -5), "-5 values"),
        (_legacy({"a": (1, [1.0])})[4:] * 2, "appears twice"),
        (_legacy({"a": (1, [float("inf")])}), "non-finite"),
    ],
)
def test_hostile_legacy_files_fail_without_allocating(tmp_path, data, message):
    path = tmp_path / "i.dat"
    if message == "appears twice":
        data = struct.pack("<i", 2) + data
    path.write_bytes(data)
    with pytest.raises(InvalidInputError, match=message):
        read_imatrix(path)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(InvalidInputError, match="is not a file"):
        read_imatrix(tmp_path / "nope.gguf")
