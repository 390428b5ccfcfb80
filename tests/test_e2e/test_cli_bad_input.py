"""Bad input from the command line: damaged or lying model files, hand-edited save folders and
wrong options each end in one line that names the problem and the fix, exit code 2, nothing
written, and (for headers that claim huge tensors) little memory."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

import lowbit
from lowbit.cli.main import main
from lowbit.eval.bundled import smollm2_gguf_path
from lowbit_testkit.cli import fails_cleanly
from lowbit_testkit.models import tiny_llama
from lowbit_testkit.process import run_measured

PEAK_LIMIT_MB = 500


def _usage_error(capsys, args: list[str], message: str, workdir: Path) -> None:
    """An option value the parser refuses: click's usage message, exit code 2, nothing run."""
    before = sorted(p.name for p in workdir.iterdir())
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Invalid value for" in err and message in err and "Traceback" not in err
    assert sorted(p.name for p in workdir.iterdir()) == before


def _fails_cleanly_in_little_memory(args: list[str], message: str, workdir: Path) -> None:
    before = sorted(p.name for p in workdir.iterdir())
    run = run_measured("import sys\nfrom lowbit.cli.main import main\nmain(sys.argv[1:])", *args)
    assert run.returncode == 1, run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and message in run.stderr, run.stderr
    assert run.peak_mb < PEAK_LIMIT_MB
    assert sorted(p.name for p in workdir.iterdir()) == before


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hf") / "tiny"
    tiny_llama(num_hidden_layers=1).save_pretrained(folder)
    return folder


def _copy_folder(source: Path, dest: Path) -> Path:
    dest.mkdir()
    for path in source.iterdir():
        (dest / path.name).write_bytes(path.read_bytes())
    return dest


def _lying_safetensors(data: bytes, name: str, shape: list[int]) -> bytes:
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    header[name]["shape"] = shape
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw + data[8 + n :]


def _small_gguf(path: Path) -> Path:
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# --- damaged and lying model files -------------------------------------------------------


@pytest.mark.parametrize("command", ["quantize", "eval"])
def test_truncated_safetensors(capsys, tmp_path, hf_folder, command) -> None:
    folder = _copy_folder(hf_folder, tmp_path / "cut")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    args = {
        "quantize": ["quantize", str(folder), "--recipe", "w8a16", "--out", str(tmp_path / "q")],
        "eval": ["eval", str(folder), "--task", "perplexity"],
    }[command]
    fails_cleanly(capsys, args, "truncated", tmp_path)


def test_size_of_a_header_claiming_a_petabyte_tensor(tmp_path, hf_folder) -> None:
    path = tmp_path / "huge.safetensors"
    data = (hf_folder / "model.safetensors").read_bytes()
    path.write_bytes(_lying_safetensors(data, "model.norm.weight", [250 * 10**12]))
    _fails_cleanly_in_little_memory(["size", str(path)], "claims shape [250000000000000]", tmp_path)


def test_quantize_with_a_header_lying_about_a_shape(tmp_path, hf_folder) -> None:
    folder = _copy_folder(hf_folder, tmp_path / "lying")
    weights = folder / "model.safetensors"
    weights.write_bytes(
        _lying_safetensors(weights.read_bytes(), "model.embed_tokens.weight", [10**7, 25 * 10**6])
    )
    args = ["quantize", str(folder), "--recipe", "w8a16", "--out", str(tmp_path / "q")]
    _fails_cleanly_in_little_memory(args, "model.embed_tokens.weight", tmp_path)


@pytest.mark.parametrize("command", ["size", "quantize", "eval"])
def test_cut_gguf(capsys, tmp_path, command) -> None:
    path = tmp_path / "cut.gguf"
    with smollm2_gguf_path().open("rb") as f:
        path.write_bytes(f.read(100_000))
    args = {
        "size": ["size", str(path)],
        "quantize": ["quantize", str(path), "--recipe", "w8a16", "--out", str(tmp_path / "q")],
        "eval": ["eval", str(path), "--task", "perplexity"],
    }[command]
    fails_cleanly(capsys, args, "not a readable GGUF file", tmp_path)


@pytest.mark.parametrize("field", ["key length", "tensor dimension"])
def test_quantize_a_gguf_with_an_inflated_header(tmp_path, field) -> None:
    path = _small_gguf(tmp_path / "inflated.gguf")
    data = bytearray(path.read_bytes())
    if field == "key length":  # the first key's length: 4.5 PB
        data[24:32] = struct.pack("<Q", 4_500_000_000_000_000)
    else:
        tensor = gguf.GGUFReader(path).tensors[0]
        dims = tensor.field.offset + 8 + len(tensor.name) + 4  # name length, name, n_dims
        data[dims : dims + 8] = struct.pack("<Q", 4 * 10**15)
    path.write_bytes(bytes(data))
    args = ["quantize", str(path), "--recipe", "w8a16", "--out", str(tmp_path / "q")]
    _fails_cleanly_in_little_memory(args, "not a readable GGUF file", tmp_path)


# --- hand-edited save folders --------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("saved") / "q"
    return lowbit.save(lowbit.quantize(tiny_llama(num_hidden_layers=1), "w8a16"), folder)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: next(iter(m["modules"].values())).update({"class": "QLinear"}), "QLinear"),
        # a value that still parses: the digest in model.safetensors catches it
        (
            lambda m: next(iter(m["modules"].values()))["metadata"].pop("spec"),
            "manifest.json was changed after saving",
        ),
        (lambda m: m.update({"cast_dtype": "float99"}), "float99"),
    ],
    ids=["wrong class name", "missing spec", "bad cast dtype"],
)
def test_eval_of_a_hand_edited_manifest(capsys, tmp_path, saved_folder, edit, message) -> None:
    folder = _copy_folder(saved_folder, tmp_path / "edited")
    manifest = json.loads((folder / "manifest.json").read_text())
    edit(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    fails_cleanly(capsys, ["eval", str(folder), "--task", "perplexity"], message, tmp_path)


# --- options --------------------------------------------------------------------------------


@pytest.mark.parametrize("threads", ["0", "-3"])
def test_threads_must_be_positive(capsys, tmp_path, hf_folder, threads) -> None:
    args = ["quantize", str(hf_folder), "--recipe", "w8a16", "--out", str(tmp_path / "q")]
    _usage_error(capsys, [*args, "--threads", threads], "--threads", tmp_path)


def test_size_of_an_absurd_parameter_count(capsys, tmp_path) -> None:
    _usage_error(capsys, ["size", "--params", "1e400"], "at most", tmp_path)


def test_subpackages_after_a_bare_import_lowbit() -> None:
    code = "import lowbit; print(lowbit.recipes.get_recipe('w8a16').name, lowbit.nn.QuantLinear)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("w8a16 <class 'lowbit.nn.linear.QuantLinear'>")
