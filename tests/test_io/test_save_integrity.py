"""lowbit.load checks the folder before trusting it: checksums, the tensor table of the
manifest, every size against the bytes on disk, and the manifest's own fields."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from lowbit.errors import InvalidInputError, LowbitError, LowbitWarning, UnsupportedFormatError
from lowbit.io import load, save
from lowbit.recipes import quantize
from lowbit_testkit.models import tiny_llama
from lowbit_testkit.process import run_measured
from lowbit_testkit.saves import write_consistent_manifest


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def _write_manifest(folder: Path, manifest: dict) -> None:
    """A manifest edited consistently (digest and checksums updated, as a buggy writer
    would): what the structural checks must catch on their own."""
    if manifest.get("format_version") == 2:
        write_consistent_manifest(folder, manifest)
    else:
        (folder / "manifest.json").write_text(json.dumps(manifest))


def _edit_by_hand(folder: Path, manifest: dict) -> None:
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _as_version_1(folder: Path) -> None:
    """What the previous format wrote: no checksums, no tensor table."""
    manifest = _manifest(folder)
    del manifest["files"], manifest["tensors"]
    manifest["format_version"] = 1
    _write_manifest(folder, manifest)


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    return save(quantize(_model(), "int8-dynamic"), tmp_path / "m")


def test_manifest_records_checksums_shapes_and_dtypes(saved: Path) -> None:
    manifest = _manifest(saved)
    weights = saved / "model.safetensors"
    assert manifest["format_version"] == 2
    assert manifest["files"] == {
        "model.safetensors": {
            "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
            "bytes": weights.stat().st_size,
        }
    }
    with safe_open(weights, "pt") as f:
        assert manifest["tensors"] == {
            k: {"dtype": f.get_slice(k).get_dtype(), "shape": f.get_slice(k).get_shape()}
            for k in f.keys()  # noqa: SIM118 (safe_open has no __iter__)
        }
    assert manifest["tensors"]["q.2.bias"] == {"dtype": "F32", "shape": [4]}


def test_overwritten_codes_are_refused(saved: Path) -> None:
    weights = saved / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-64:] = bytes(64)  # same size, valid header: only the checksum can tell
    weights.write_bytes(bytes(data))
    with pytest.raises(InvalidInputError, match=r"model\.safetensors.*changed since it was saved"):
        load(saved, _model())


def test_a_deleted_bias_is_refused(saved: Path) -> None:
    weights = saved / "model.safetensors"
    tensors = load_file(weights)
    del tensors["q.2.bias"]
    save_file(tensors, str(weights), metadata={"format": "lowbit-model"})
    with pytest.raises(InvalidInputError, match=r"q\.2\.bias"):
        load(saved, _model())


def test_a_deleted_bias_is_refused_in_a_version_1_folder(saved: Path) -> None:
    _as_version_1(saved)
    weights = saved / "model.safetensors"
    tensors = load_file(weights)
    del tensors["q.2.bias"]
    save_file(tensors, str(weights), metadata={"format": "lowbit-model"})
    with pytest.warns(LowbitWarning), pytest.raises(InvalidInputError, match=r"q\.2\.bias"):
        load(saved, _model())


def test_version_1_folders_load_with_a_warning_that_says_to_save_again(saved: Path) -> None:
    _as_version_1(saved)
    with pytest.warns(LowbitWarning, match="save it again"):
        loaded = load(saved, _model())
    x = torch.randn(3, 16)
    reference = load(save(loaded, saved), _model())  # saving again adds the checksums
    assert _manifest(saved)["format_version"] == 2
    with torch.no_grad():
        assert torch.equal(loaded(x), reference(x))


def test_a_header_that_lies_about_a_shape_is_refused(saved: Path) -> None:
    weights = saved / "model.safetensors"
    data = weights.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    header["q.2.bias"]["shape"] = [10**7, 25 * 10**6]
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    weights.write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + n :])
    with pytest.raises(InvalidInputError, match=r"q\.2\.bias"):
        load(saved, _model())


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m["modules"]["0"].update({"class": "QuantLinearX"}), "QuantLinearX"),
        (lambda m: m["modules"]["0"]["metadata"].pop("spec"), "'spec'"),
        (lambda m: m.update({"cast_dtype": "float99"}), "float99"),
        (lambda m: m.update({"cast_dtype": "Tensor"}), "Tensor"),
        (lambda m: m.update({"modules": []}), "modules"),
        (lambda m: m.update({"aliases": {"a": 3}}), "aliases"),
    ],
)
def test_a_damaged_manifest_is_one_clear_error(saved: Path, edit, message: str) -> None:
    manifest = _manifest(saved)
    edit(manifest)
    _write_manifest(saved, manifest)
    with pytest.raises(LowbitError, match=message) as info:
        load(saved, _model())
    assert isinstance(info.value, InvalidInputError | UnsupportedFormatError)
    assert "save" in str(info.value)


@pytest.mark.parametrize(
    ("architecture", "message"),
    [
        ({"class": "AutoConfig", "config": {}}, "AutoConfig"),
        ({"class": "LlamaForCausalLM", "config": {"hidden_size": "wide"}}, "config"),
    ],
)
def test_a_damaged_transformers_entry_is_one_clear_error(
    saved: Path, architecture: dict, message: str
) -> None:
    manifest = _manifest(saved)
    manifest["transformers"] = architecture
    _write_manifest(saved, manifest)
    with pytest.raises(LowbitError, match=message) as info:
        load(saved)
    assert isinstance(info.value, InvalidInputError | UnsupportedFormatError)
    assert "save" in str(info.value)


_LOAD = """
import sys
from lowbit.errors import LowbitError
from lowbit.io import load
try:
    load(sys.argv[1])
except LowbitError as exc:
    print(exc)
"""


def test_an_edited_vocab_size_fails_before_allocating(tmp_path: Path) -> None:
    qmodel = quantize(tiny_llama(), "w8a16")
    intact, folder = save(qmodel, tmp_path / "intact"), save(qmodel, tmp_path / "edited")
    manifest = _manifest(folder)
    manifest["transformers"]["config"]["vocab_size"] = 2_000_000  # 2 x 256 MB of fp32 tables
    _write_manifest(folder, manifest)
    baseline, edited = run_measured(_LOAD, str(intact)), run_measured(_LOAD, str(folder))
    assert baseline.stdout == "", baseline.stdout  # loading the intact tiny model: the baseline
    assert "(2000000, 32)" in edited.stdout and "save the model again" in edited.stdout
    assert edited.peak_mb < baseline.peak_mb + 100


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m["modules"]["0"]["metadata"]["spec"].update(relu=True),  # still parses
        lambda m: m["recipe"].update(name="w4a16-g128"),
        lambda m: m.update(float_layers={"0": "edited"}),
    ],
    ids=["module spec", "recipe", "float layers"],
)
def test_a_hand_edited_manifest_value_that_still_parses_is_refused(saved: Path, edit) -> None:
    manifest = _manifest(saved)
    edit(manifest)
    _edit_by_hand(saved, manifest)
    with pytest.raises(InvalidInputError, match=r"manifest\.json was changed after saving"):
        load(saved, _model())


def test_the_digest_survives_a_json_round_trip_and_a_resave(saved: Path, tmp_path: Path) -> None:
    (saved / "manifest.json").write_text(json.dumps(_manifest(saved), indent=4))  # reformatted
    again = save(load(saved, _model()), tmp_path / "again")
    assert isinstance(load(again, _model())[0].weight, object)
