"""Streamed safetensors: a file built one tensor at a time is byte-identical to
safetensors.torch.save_file of the same tensors, and the pread reader gives them back."""

from __future__ import annotations

import hashlib

import pytest
import safetensors.torch
import torch

from lowbit.errors import InvalidInputError
from lowbit.io.safetensors_stream import DTYPE_NAMES, SafetensorsFiles, SafetensorsStreamWriter


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    out: dict[str, torch.Tensor] = {}
    for i, dtype in enumerate(DTYPE_NAMES):
        for j, shape in enumerate([(3, 5), (7,), (), (0, 4), (2, 3, 2)]):
            x = torch.randn(shape, generator=g) * 100
            out[f"{'zyx'[j % 3]}.layer{i}.{j}"] = x.to(dtype)
    out["f.model.layers.10.w"] = torch.arange(6, dtype=torch.int8)
    out["f.model.layers.9.w"] = torch.arange(6, dtype=torch.int8).t()  # names in byte order
    out["q.ü.non_ascii"] = torch.ones(3, dtype=torch.float16)
    return out


@pytest.mark.parametrize("metadata", [None, {"lowbit.digest": "abc123"}])
def test_streamed_file_equals_save_file_byte_for_byte(tmp_path, metadata) -> None:
    tensors = _tensors()
    safetensors.torch.save_file(tensors, str(tmp_path / "ref.safetensors"), metadata=metadata)
    writer = SafetensorsStreamWriter(tmp_path / "out.safetensors")
    for name in reversed(list(tensors)):  # any order of arrival
        writer.add(name, tensors[name])
    writer.close(metadata)
    assert not (tmp_path / "out.safetensors.data").exists()
    digests = [
        hashlib.sha256((tmp_path / f).read_bytes()).hexdigest()
        for f in ("ref.safetensors", "out.safetensors")
    ]
    assert digests[0] == digests[1]


def test_reader_gives_every_tensor_back_across_shards(tmp_path) -> None:
    tensors = _tensors()
    names = list(tensors)
    safetensors.torch.save_file(
        {n: tensors[n] for n in names[::2]}, str(tmp_path / "a.safetensors")
    )
    safetensors.torch.save_file(
        {n: tensors[n] for n in names[1::2]}, str(tmp_path / "b.safetensors")
    )
    files = SafetensorsFiles([tmp_path / "a.safetensors", tmp_path / "b.safetensors"])
    assert sorted(files.tensors) == sorted(names)
    for name, tensor in tensors.items():
        got = files.read(name)
        assert got.dtype == tensor.dtype and got.shape == tensor.shape
        assert torch.equal(got, tensor), name


def test_a_tensor_in_two_shards_is_refused(tmp_path) -> None:
    for f in ("a", "b"):
        safetensors.torch.save_file({"w": torch.ones(2)}, str(tmp_path / f"{f}.safetensors"))
    with pytest.raises(InvalidInputError, match="keep one copy"):
        SafetensorsFiles([tmp_path / "a.safetensors", tmp_path / "b.safetensors"])


def test_adding_a_name_twice_is_a_bug(tmp_path) -> None:
    writer = SafetensorsStreamWriter(tmp_path / "out.safetensors")
    writer.add("w", torch.ones(2))
    with pytest.raises(ValueError, match="twice"):
        writer.add("w", torch.ones(2))
