"""`lowbit size` as a user runs it: from a parameter count, from a model file, as JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from lowbit.cli.main import app, main
from lowbit.errors import InvalidInputError

runner = CliRunner()
LOWBIT = Path(sys.executable).parent / "lowbit"


def _size_json(*args: str) -> dict:
    result = runner.invoke(app, ["size", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _by_name(doc: dict) -> dict[str, dict]:
    return {f["name"]: f for f in doc["formats"]}


def test_176b_in_every_format() -> None:
    doc = _size_json("--params", "176e9")
    assert doc["n_params"] == 176 * 10**9
    fmts = _by_name(doc)
    assert fmts["fp32"]["bytes"] == 704 * 10**9
    assert fmts["bf16"]["bytes"] == 352 * 10**9
    assert fmts["int8"]["bytes"] == 176 * 10**9
    assert fmts["int4"]["bytes"] == 88 * 10**9
    assert fmts["int4-g128"]["bits_per_weight"] == 4.125
    assert "file" not in doc


def test_table_says_decimal_units() -> None:
    result = runner.invoke(app, ["size", "--params", "1e9"])
    assert result.exit_code == 0, result.output
    assert "1 GB = 1e9 bytes" in result.stdout
    assert "250 MB" in result.stdout  # int2: 1e9 x 2 bits
    assert "4.00 GB" in result.stdout  # fp32


@pytest.mark.parametrize(("text", "count"), [("7B", 7 * 10**9), ("1.5e9", 1_500_000_000)])
def test_count_spellings(text: str, count: int) -> None:
    assert _size_json("--params", text)["n_params"] == count


@pytest.mark.parametrize(
    "args", [["size"], ["size", "--params", "1e9", "x.gguf"], ["size", "--params", "0.5"]]
)
def test_usage_errors(args: list[str]) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert "Invalid value" in result.output


def test_safetensors_file_adds_its_size_on_disk(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file({"w": torch.zeros(64, 32), "b": torch.zeros(64, dtype=torch.bfloat16)}, str(path))
    doc = _size_json(str(path))
    assert doc["n_params"] == 64 * 32 + 64
    assert doc["file"]["bytes_on_disk"] == path.stat().st_size
    assert doc["file"]["n_tensors"] == 2
    assert doc["file"]["path"] == str(path)
    assert _by_name(doc)["fp16"]["bytes"] == doc["n_params"] * 2
    table = runner.invoke(app, ["size", str(path)])
    assert "on disk (safetensors)" in table.stdout
    assert f"{path.stat().st_size:,}" in table.stdout


def test_missing_file_is_a_lowbit_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["size", str(tmp_path / "missing.gguf")])
    assert isinstance(result.exception, InvalidInputError)


def test_installed_entry_point() -> None:
    if not LOWBIT.exists():
        pytest.fail("the lowbit entry point is not installed: pip install -e .")
    out = subprocess.run(
        [str(LOWBIT), "size", "--params", "1e9", "--json"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    fmts = _by_name(json.loads(out.stdout))
    assert fmts["int2"]["bytes"] == 250_000_000
    assert fmts["fp32"]["bytes"] == 4 * 10**9


def test_lowbit_error_becomes_one_line_and_exit_code_1(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["size", "/no/such/model.gguf"])
    assert exc.value.code == 1
    assert "error: no such file or folder: /no/such/model.gguf" in capsys.readouterr().err
