"""lowbit.io.gguf's validating reader: every file ends in a parsed header or a LowbitError."""

from __future__ import annotations

import contextlib
import json
import struct
from pathlib import Path

import gguf
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lowbit.cli.main import main
from lowbit.errors import InvalidInputError, LowbitError
from lowbit.eval.bundled import smollm2_gguf_path
from lowbit.io.gguf import read_gguf
from lowbit_testkit.fuzz import small_gguf
from lowbit_testkit.process import run_measured

Q = gguf.GGMLQuantizationType


@pytest.fixture(scope="module")
def valid(tmp_path_factory) -> bytes:
    return small_gguf(tmp_path_factory.mktemp("gguf") / "v.gguf").read_bytes()


def _read(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "x.gguf"
    path.write_bytes(data)
    with contextlib.suppress(LowbitError):
        read_gguf(path)


def test_matches_gguf_py_on_the_bundled_model() -> None:
    path = smollm2_gguf_path()
    ours, theirs = read_gguf(path), gguf.GGUFReader(path)
    assert [t.name for t in ours.tensors] == [t.name for t in theirs.tensors]
    for a, b in zip(ours.tensors, theirs.tensors, strict=True):
        assert (a.ne, a.offset, a.n_bytes, a.type.id) == (
            tuple(int(d) for d in b.shape),
            b.data_offset,
            b.n_bytes,
            int(b.tensor_type),
        )
    assert ours.metadata["llama.context_length"] == 8192
    assert len(ours.metadata["tokenizer.ggml.tokens"]) == 49152


def test_dequantize_equals_gguf_py(tmp_path: Path) -> None:
    path = small_gguf(tmp_path / "m.gguf")
    ours, theirs = read_gguf(path), gguf.GGUFReader(path)
    for a, b in zip(ours.tensors, theirs.tensors, strict=True):
        expected = gguf.quants.dequantize(b.data, b.tensor_type).reshape(a.shape)
        np.testing.assert_array_equal(ours.dequantize(a), expected)
        assert a.type.name == b.tensor_type.name
    assert {t.name: t.bits_per_weight for t in ours.tensors} == {
        "f32": 32, "f16": 16, "q8": 8.5, "q40": 4.5, "q41": 5.0
    }  # fmt: skip


def test_gguf_py_over_a_plain_array_parses_what_gguf_py_parses(tmp_path: Path) -> None:
    """lowbit's faster gguf-py parse (no np.memmap overrides) reads the same fields and
    tensors, from the same mapped file."""
    from lowbit.io.gguf.gguf_py import gguf_py_reader

    path = small_gguf(tmp_path / "m.gguf")
    fast, plain = gguf_py_reader(path), gguf.GGUFReader(path)
    assert type(fast.data) is np.ndarray and isinstance(plain.data, np.memmap)
    assert list(fast.fields) == list(plain.fields)
    for name, field in plain.fields.items():
        other = fast.fields[name]
        assert (other.offset, other.data, other.types) == (field.offset, field.data, field.types)
        assert all(np.array_equal(a, b) for a, b in zip(other.parts, field.parts, strict=True))
    for a, b in zip(fast.tensors, plain.tensors, strict=True):
        assert (a.name, a.data_offset, a.tensor_type) == (b.name, b.data_offset, b.tensor_type)
        np.testing.assert_array_equal(a.data, b.data)
    assert np.shares_memory(fast.tensors[0].data, fast.data)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(cut=st.integers(min_value=0))
def test_truncated_anywhere(tmp_path: Path, valid: bytes, cut: int) -> None:
    cut %= len(valid)
    path = tmp_path / "cut.gguf"
    path.write_bytes(valid)
    data_end = max(t.offset + t.n_bytes for t in read_gguf(path).tensors)
    path.write_bytes(valid[:cut])
    if cut >= data_end:  # only the last tensor's trailing padding is cut: still whole
        read_gguf(path)
        return
    with pytest.raises(InvalidInputError, match="not a readable GGUF file"):
        read_gguf(path)


@settings(
    max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    edits=st.lists(
        st.tuples(st.integers(min_value=0), st.sampled_from([1, 4, 8]), st.integers(0, 2**64 - 1)),
        min_size=1,
        max_size=4,
    ),
    header_only=st.booleans(),
)
def test_overwritten_bytes_end_in_success_or_a_lowbit_error(
    tmp_path: Path, valid: bytes, edits, header_only: bool
) -> None:
    data = bytearray(valid)
    limit = _data_offset(tmp_path, valid) if header_only else len(data)
    for pos, width, value in edits:
        pos %= max(1, limit - width)
        data[pos : pos + width] = (value % 2 ** (8 * width)).to_bytes(width, "little")
    _read(tmp_path, bytes(data))


def _data_offset(tmp_path: Path, valid: bytes) -> int:
    """Where the tensor data starts: the bytes before it are the header."""
    path = tmp_path / "valid.gguf"
    path.write_bytes(valid)
    return read_gguf(path).data_offset


def _field_offset(data: bytes, needle: bytes) -> int:
    pos = data.index(needle)
    return pos + len(needle)


# Each crafted header and the words its error must hold.
def _cases(valid: bytes) -> dict[str, tuple[bytes, str]]:
    key = _field_offset(valid, b"general.architecture") - len("general.architecture") - 8
    tensor = _field_offset(valid, b"q40")  # n_dims, dims, type, offset follow the name
    n_dims_at, dim0_at = tensor, tensor + 4
    type_at, offset_at = tensor + 4 + 16, tensor + 4 + 16 + 4

    def put(fmt: str, at: int, value: int) -> bytes:
        d = bytearray(valid)
        struct.pack_into(fmt, d, at, value)
        return bytes(d)

    return {
        "wrong magic": (b"GGML" + valid[4:], "magic"),
        "version 1": (put("<I", 4, 1), "version 1"),
        "version 4": (put("<I", 4, 4), "version 4"),
        "tensor count 2**62": (put("<Q", 8, 2**62), "tensors"),
        "kv count 2**62": (put("<Q", 16, 2**62), "key-value pairs"),
        "key length 2**62": (put("<Q", key, 2**62), "key 0"),
        "n_dims 5": (put("<I", n_dims_at, 5), "5 dimensions"),
        "n_dims 0": (put("<I", n_dims_at, 0), "0 dimensions"),
        "zero dim": (put("<Q", dim0_at, 0), "every dimension must be > 0"),
        "negative dim": (put("<q", dim0_at, -64), "every dimension must be > 0"),
        "element overflow": (put("<Q", dim0_at, 2**62), "2**63 elements"),
        "unknown type": (put("<I", type_at, 99), "unknown ggml type id 99"),
        "shape/type mismatch": (put("<Q", dim0_at, 48), "not a whole number"),
        "misaligned offset": (put("<Q", offset_at, 3), "not a multiple of 32"),
        "data past the end": (put("<Q", offset_at, 2**40), "but the file has"),
        "overlapping tensors": (put("<Q", offset_at, 0), "overlaps"),
        "truncated data": (valid[:-40], "but the file has"),  # past the end padding
        "empty": (b"", "shorter than"),
    }


def test_every_crafted_case_names_the_problem(tmp_path: Path, valid: bytes) -> None:
    for name, (data, words) in _cases(valid).items():
        path = tmp_path / "bad.gguf"
        path.write_bytes(data)
        with pytest.raises(InvalidInputError) as info:
            read_gguf(path)
        assert words in str(info.value) and str(path) in str(info.value), (name, info.value)


def test_cli_inspect_each_bad_file_prints_one_line(capsys, tmp_path: Path, valid: bytes) -> None:
    for name, (data, words) in _cases(valid).items():
        path = tmp_path / "bad.gguf"
        path.write_bytes(data)
        with pytest.raises(SystemExit) as exit_info:
            main(["inspect", str(path)])
        assert exit_info.value.code == 1, name  # lowbit's exit code for every LowbitError
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and words in err, (name, err)
        assert "Traceback" not in err


def test_cli_inspect_json(capsys, tmp_path: Path) -> None:
    path = small_gguf(tmp_path / "m.gguf")
    main(["inspect", str(path), "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert doc["summary"]["context_length"] == 128
    assert doc["summary"]["tokenizer_model"] == "gpt2"
    assert doc["by_type"]["Q4_0"] == {"tensors": 1, "elements": 128, "bytes": 72}
    assert doc["tensors"][0] == {
        "name": "f32", "type": "F32", "shape": [2, 8], "elements": 16, "bytes": 64,
        "bits_per_weight": 32.0,
    }  # fmt: skip


def test_cli_inspect_table(capsys) -> None:
    main(["inspect", str(smollm2_gguf_path())])
    out = capsys.readouterr().out
    assert "token_embd.weight" in out and "Q4_1" in out and "49152 x str" in out


@pytest.mark.parametrize("field", ["string", "array"])
def test_a_2_to_62_length_stays_in_bounded_memory(tmp_path: Path, valid: bytes, field) -> None:
    path = tmp_path / "huge.gguf"
    data = bytearray(valid)
    if field == "string":  # the tokenizer model's value: "gpt2"
        at = valid.index(b"\x04\x00\x00\x00\x00\x00\x00\x00gpt2")
        struct.pack_into("<Q", data, at, 2**62)
    else:  # the token list's element count (3 strings)
        at = valid.index(b"\x03\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00a")
        struct.pack_into("<Q", data, at, 2**62)
    path.write_bytes(bytes(data))
    run = run_measured(
        "import sys\nfrom lowbit.cli.main import main\nmain(sys.argv[1:])", "inspect", str(path)
    )
    assert run.returncode == 1, run.stderr
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert "not a readable GGUF file" in run.stderr
    assert run.peak_mb < len(data) / 2**20 + 300, run.peak_mb
    print(f"peak RSS {run.peak_mb:.0f} MB")
