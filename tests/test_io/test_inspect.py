"""Counting parameters from safetensors, GGUF and Hugging Face folders, headers only."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import safetensors.torch as safetensors_torch
import torch

from lowbit.errors import InvalidInputError, UnsupportedFormatError
from lowbit.io import count_parameters

TENSORS = {
    "embed.weight": ((10, 8), torch.bfloat16),
    "layer.weight": ((8, 8), torch.float32),
    "layer.bias": ((8,), torch.float32),
    "norm.scale": ((), torch.float16),
}


def _tensors(spec: dict) -> dict[str, torch.Tensor]:
    return {name: torch.randn(shape).to(dtype) for name, (shape, dtype) in spec.items()}


def _expected_params(spec: dict) -> int:
    return sum(int(np.prod(shape)) for shape, _ in spec.values())


def _write_safetensors(path: Path, spec: dict = TENSORS) -> Path:
    safetensors_torch.save_file(_tensors(spec), str(path))
    return path


def _write_gguf(path: Path) -> Path:
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tensor("f32", np.zeros((4, 8), np.float32))
    q4 = gguf.quants.quantize(
        np.random.default_rng(0).standard_normal((3, 64), np.float32),
        gguf.GGMLQuantizationType.Q4_0,
    )
    writer.add_tensor("q4", q4, raw_dtype=gguf.GGMLQuantizationType.Q4_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_safetensors_file(tmp_path: Path) -> None:
    path = _write_safetensors(tmp_path / "m.safetensors")
    info = count_parameters(path)
    assert info.format == "safetensors"
    assert info.n_params == _expected_params(TENSORS) == 80 + 64 + 8 + 1
    assert info.n_tensors == len(TENSORS)
    assert info.bytes_on_disk == path.stat().st_size
    assert info.dtypes == {"BF16": 80, "F32": 72, "F16": 1}
    assert info.files == (path,)


def test_gguf_counts_elements_not_bytes(tmp_path: Path) -> None:
    path = _write_gguf(tmp_path / "m.gguf")
    info = count_parameters(path)
    assert info.format == "gguf"
    assert info.n_tensors == 2
    # the Q4_0 tensor stores 3 x 36 bytes for 3 x 64 weights: count the weights
    assert info.dtypes == {"F32": 32, "Q4_0": 192}
    assert info.n_params == 224
    assert info.bytes_on_disk == path.stat().st_size


def test_hf_folder_sums_shards(tmp_path: Path) -> None:
    a = dict(list(TENSORS.items())[:2])
    b = dict(list(TENSORS.items())[2:])
    _write_safetensors(tmp_path / "model-00001-of-00002.safetensors", a)
    _write_safetensors(tmp_path / "model-00002-of-00002.safetensors", b)
    (tmp_path / "config.json").write_text("{}")
    info = count_parameters(tmp_path)
    assert info.n_params == _expected_params(TENSORS)
    assert info.n_tensors == len(TENSORS)
    assert len(info.files) == 2
    assert info.bytes_on_disk == sum(f.stat().st_size for f in info.files)


def test_hf_folder_follows_the_index_and_skips_duplicates(tmp_path: Path) -> None:
    _write_safetensors(tmp_path / "model-00001-of-00001.safetensors")
    _write_safetensors(tmp_path / "consolidated.safetensors")  # same weights, other layout
    weight_map = {name: "model-00001-of-00001.safetensors" for name in TENSORS}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert count_parameters(tmp_path).n_params == _expected_params(TENSORS)
    (tmp_path / "model-00001-of-00001.safetensors").unlink()
    with pytest.raises(InvalidInputError, match="download the missing shards"):
        count_parameters(tmp_path)


def test_pickled_checkpoints_are_refused(tmp_path: Path) -> None:
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(UnsupportedFormatError, match="convert the model to safetensors"):
        count_parameters(tmp_path)
    with pytest.raises(UnsupportedFormatError, match="unpickling"):
        count_parameters(tmp_path / "pytorch_model.bin")


def test_missing_path_unknown_extension_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="check the path"):
        count_parameters(tmp_path / "nope.safetensors")
    (tmp_path / "weights.npz").write_bytes(b"x")
    with pytest.raises(UnsupportedFormatError, match=r"\.safetensors file, a \.gguf file"):
        count_parameters(tmp_path / "weights.npz")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InvalidInputError, match="no model weights"):
        count_parameters(empty)


def _damage_cases(data: bytes) -> dict[str, bytes]:
    n = int.from_bytes(data[:8], "little")
    return {
        "empty": b"",
        "short": data[:5],
        "header cut": data[: 8 + n // 2],
        "data cut": data[:-10],
        "bad json": data[:8] + b"{" * n + data[8 + n :],
        "not an object": (2).to_bytes(8, "little") + b"[]",
        "bad entry": _with_header({"w": {"dtype": "F32", "shape": "x", "data_offsets": [0, 4]}}),
    }


def _with_header(header: dict) -> bytes:
    raw = json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw + bytes(4)


@pytest.mark.parametrize(
    "case", ["empty", "short", "header cut", "data cut", "bad json", "not an object", "bad entry"]
)
def test_damaged_safetensors(tmp_path: Path, case: str) -> None:
    data = _write_safetensors(tmp_path / "good.safetensors").read_bytes()
    path = tmp_path / "bad.safetensors"
    path.write_bytes(_damage_cases(data)[case])
    with pytest.raises(InvalidInputError, match="download or save it again"):
        count_parameters(path)


@pytest.mark.parametrize("cut", [0, 3, 40, -40])
def test_damaged_gguf(tmp_path: Path, cut: int) -> None:
    data = _write_gguf(tmp_path / "good.gguf").read_bytes()
    path = tmp_path / "bad.gguf"
    path.write_bytes(data[:cut])
    with pytest.raises(InvalidInputError, match="not a readable GGUF file"):
        count_parameters(path)


def test_no_tensors_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "meta_only.safetensors"
    safetensors_torch.save_file({}, str(path), metadata={"format": "pt"})
    with pytest.raises(InvalidInputError, match="holds no parameters"):
        count_parameters(path)


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ({"dtype": "F32", "shape": [10**7, 25 * 10**6], "data_offsets": [0, 16]}, "claims shape"),
        ({"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "cover 8 of the 16"),
        ({"dtype": "F99", "shape": [4], "data_offsets": [0, 16]}, "bad header entry"),
    ],
)
def test_a_header_that_lies_about_its_data_is_refused(
    tmp_path: Path, entry: dict, problem: str
) -> None:
    raw = json.dumps({"w": entry}).encode()
    path = tmp_path / "lying.safetensors"
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + bytes(16))
    with pytest.raises(InvalidInputError, match=problem):
        count_parameters(path)
