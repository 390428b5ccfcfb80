"""Path safety (issue 15): names in a save folder's manifest cannot reach outside it, no
symbolic link in a save folder is followed, and a Hugging Face folder's own Python code never
runs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from lowbit.cli.main import main
from lowbit.errors import InvalidInputError, LowbitError
from lowbit.io import load, save
from lowbit.recipes import quantize
from lowbit_testkit.saves import write_consistent_manifest


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    folder = tmp_path / "save"
    save(quantize(_model(), "w8a16"), folder)
    return folder


@pytest.mark.parametrize("name", ["../secret.txt", "/etc/passwd", "a/../../b", "x\\..\\y", ""])
def test_a_file_name_outside_the_folder_is_refused(saved: Path, name: str) -> None:
    (saved.parent / "secret.txt").write_text("not lowbit's")
    manifest = json.loads((saved / "manifest.json").read_text())
    manifest["files"][name] = {"sha256": "0" * 64, "bytes": 12}
    write_consistent_manifest(saved, manifest)
    with pytest.raises(InvalidInputError, match="not inside the save folder"):
        load(saved, _model())


@pytest.mark.parametrize("which", ["model.safetensors", "manifest.json"])
def test_a_symlinked_file_is_refused(saved: Path, which: str) -> None:
    real = saved.parent / f"elsewhere-{which}"
    (saved / which).rename(real)
    os.symlink(real, saved / which)
    with pytest.raises(InvalidInputError, match="symbolic link"):
        load(saved, _model())


def test_a_symlinked_subfolder_is_refused(saved: Path) -> None:
    outside = saved.parent / "outside"
    outside.mkdir()
    (outside / "notes.txt").write_text("x")
    os.symlink(outside, saved / "sub")
    manifest = json.loads((saved / "manifest.json").read_text())
    manifest["files"]["sub/notes.txt"] = {"sha256": "0" * 64, "bytes": 1}
    write_consistent_manifest(saved, manifest)
    with pytest.raises(InvalidInputError, match="symbolic link"):
        load(saved, _model())


def test_remote_code_in_a_hugging_face_folder_never_runs(tmp_path: Path, capsys) -> None:
    """A folder whose config maps AutoModel to its own modeling file (auto_map), as hub repos
    with custom code do: lowbit refuses it without importing that file."""
    folder = tmp_path / "custom"
    folder.mkdir()
    marker = tmp_path / "ran.txt"
    (folder / "modeling_evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('remote code ran')\n"
        "from transformers import PreTrainedModel\n"
        "class EvilModel(PreTrainedModel):\n    pass\n"
    )
    (folder / "configuration_evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('remote code ran')\n"
        "from transformers import PretrainedConfig\n"
        "class EvilConfig(PretrainedConfig):\n    model_type = 'evil'\n"
    )
    config = {
        "model_type": "evil",
        "architectures": ["EvilModel"],
        "auto_map": {"AutoConfig": "configuration_evil.EvilConfig",
                     "AutoModel": "modeling_evil.EvilModel"},
    }  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    from lowbit.io.hf import load_model

    with pytest.raises(LowbitError):
        load_model(folder)
    with pytest.raises(SystemExit) as exit_info:
        main(["quantize", str(folder), "--recipe", "w8a16", "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 1
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not marker.exists()
