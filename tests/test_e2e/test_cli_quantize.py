"""`lowbit quantize` checks every option and the output folder before it reads the model:
a mistake is one line and exit code 2 within a second, with nothing written (issue 11:
they were found only after loading and quantizing, after a GPTQ run of many minutes)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

import lowbit.io.hf
from lowbit.cli.main import main
from lowbit.eval.bundled import smollm2_gguf_path


def _smollm2() -> str:
    return str(smollm2_gguf_path())


def _bad_cases(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    other = tmp_path / "someone-elses-folder"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    out = ["--out", str(tmp_path / "out")]
    return {
        "out exists": (["--out", str(other)], "is not a lowbit save folder"),
        "out's parent is a file": (["--out", str(a_file / "sub" / "out")], "is a file"),
        "out unwritable": (["--out", "/proc/lowbit-out"], "choose an output folder you can"),
        "embeddings foo": ([*out, "--embeddings", "foo"], "'foo' is not an embedding format"),
        "unknown recipe": ([*out, "--recipe", "w4a16-g128-gtpq"], "unknown preset"),
        "samples 0": ([*out, "--samples", "0"], "--samples must be at least 1"),
        "threads 0": ([*out, "--threads", "0"], "Invalid value for '--threads'"),
        "calib missing": ([*out, "--calib", str(tmp_path / "no.txt")], "no such text file"),
        "two budgets": (
            [*out, "--target-bpw", "4", "--max-loss", "1%"],
            "give exactly one budget",
        ),
        "max-loss abc": ([*out, "--max-loss", "abc"], "--max-loss takes a fraction"),
        "candidate foo": ([*out, "--target-bpw", "4", "--candidates", "w8a16,foo"], "'foo'"),
        "mixed static": (
            [*out, "--recipe", "int8-static", "--target-size", "60MB"],
            "must be weight-only",
        ),
        "mixed streamed": (
            [*out, "--target-bpw", "4", "--max-memory", "2GB"],
            "drop --max-memory",
        ),
    }


def test_bad_options_fail_in_one_line_before_the_model_is_read(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    def never(*args, **kwargs):
        raise AssertionError("the model was read before the options were checked")

    monkeypatch.setattr(lowbit.io.hf, "load_model", never)
    cases = _bad_cases(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    for case, (args, message) in cases.items():
        argv = ["quantize", _smollm2(), "--recipe", "w4a16-g128-gptq", *args]
        started = time.perf_counter()
        with pytest.raises(SystemExit) as exc:
            main(argv)
        seconds = time.perf_counter() - started
        err = capsys.readouterr().err
        # 2: the parser refused the command line (click); 1: lowbit's checks refused it
        assert exc.value.code == (2 if "Invalid value" in message else 1), case
        assert err.startswith("error: ") and err.count("\n") == 1, (case, err)
        assert message in err, (case, err)
        assert seconds < 1.0, (case, seconds)
    assert sorted(tmp_path.rglob("*")) == before  # nothing written, nothing replaced
    assert not Path("/proc/lowbit-out").exists()


def test_the_command_exits_1_before_loading(tmp_path: Path) -> None:
    """The real console script on the real GGUF (a 30 s load): an invalid --embeddings
    ends the process in the time it takes to import lowbit."""
    out = tmp_path / "out"
    args = ["quantize", _smollm2(), "--recipe", "w4a16-g128-gptq", "--out", str(out)]
    code = "from lowbit.cli.main import main; main()"
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", code, *args, "--embeddings", "foo"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("\n") == 1 and "'foo' is not an embedding format" in result.stderr
    assert time.perf_counter() - started < 15  # imports only; loading alone takes ~30 s
    assert not out.exists()


def test_mixed_precision_on_a_folder_stays_within_the_target(tmp_path: Path, capsys) -> None:
    """--target-bpw: a format per layer within the budget, the plan and every layer's
    sensitivity written beside the weights."""
    import json

    from lowbit_testkit.models import tiny_llama_folder

    source = tiny_llama_folder(tmp_path / "src", hidden_size=64, intermediate_size=128)
    calib = tmp_path / "calib.txt"
    calib.write_text("the theta of the heart " * 200)
    out = tmp_path / "out"
    options = ["--calib", str(calib), "--samples", "4", "--seq-len", "32", "--json"]
    budget = ["--recipe", "w4a16-g32", "--target-bpw", "6", "--out", str(out)]
    main(["quantize", str(source), *budget, *options])
    doc = json.loads(capsys.readouterr().out)
    plan = doc["mixed_precision"]
    n_params = 8 * doc["weights_bytes"] / doc["bits_per_weight"]
    assert plan["total_bytes"] <= 6 * n_params / 8 and doc["bits_per_weight"] <= 6.0  # the file
    assert len(set(plan["layers"].values())) > 1
    saved = json.loads((out / "mixed_precision.json").read_text())
    assert saved["plan"]["layers"] == plan["layers"]
    assert {layer["name"] for layer in saved["sensitivity"]["layers"]} == set(plan["layers"])
