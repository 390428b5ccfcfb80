"""GGUF mixed precision (issue 16): a block type per tensor chosen from measured
sensitivities under a whole-file size target; the file keeps llama.cpp's layout, holds the
chosen types, fits the target, and llama.cpp runs it."""

from __future__ import annotations

import re
import subprocess

import pytest

from lowbit.errors import InvalidSpecError
from lowbit.export import export_gguf
from lowbit.export.gguf_mixed import GGUFTarget
from lowbit.io.gguf.reader import read_gguf
from lowbit_testkit.models import tiny_llama_folder

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    calib = root / "calib.txt"
    calib.write_text("the quick brown fox jumps over the lazy dog. " * 60)
    folder = tiny_llama_folder(root / "llama", hidden_size=256, intermediate_size=512)
    return folder, calib


def _export(source, out, bpw: float, method: str = "rtn"):
    folder, calib = source
    return export_gguf(folder, out, "q4_k_m", method=method, calib=calib, seq_len=16,
                       calib_windows=2, target=GGUFTarget(bits_per_weight=bpw))  # fmt: skip


@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_the_file_fits_the_target_with_the_chosen_types(source, tmp_path, method) -> None:
    result = _export(source, tmp_path / "m.gguf", 6.0, method)
    size = result.path.stat().st_size
    assert size <= 6.0 * result.n_params / 8 and result.bits_per_weight <= 6.0
    chosen = result.mixed["tensor_types"]
    written = {t.name: t.type.name for t in read_gguf(result.path).tensors}
    assert all(written[name] == t for name, t in chosen.items())
    assert "token_embd.weight" in chosen and len(set(chosen.values())) > 1
    assert all(written[n] == "F32" for n in written if n.endswith("norm.weight"))


def test_a_larger_target_gives_more_bits_and_less_estimated_loss(source, tmp_path) -> None:
    small = _export(source, tmp_path / "s.gguf", 5.0)
    large = _export(source, tmp_path / "l.gguf", 8.0)
    assert small.output_bytes < large.output_bytes <= 8.0 * large.n_params / 8
    assert large.mixed["estimated_loss"] < small.mixed["estimated_loss"]


def test_impossible_targets_and_unknown_candidates_are_refused(source, tmp_path) -> None:
    with pytest.raises(InvalidSpecError, match="below the smallest file"):
        _export(source, tmp_path / "x.gguf", 1.0)
    folder, _ = source
    with pytest.raises(InvalidSpecError, match="unknown: w4a16"):
        export_gguf(folder, tmp_path / "y.gguf", "q4_k_m", target=GGUFTarget(max_bytes=10**6),
                    candidates=("q4_k", "w4a16"))  # fmt: skip
    assert not (tmp_path / "x.gguf").exists() and not (tmp_path / "y.gguf").exists()


def test_a_q4_1_source_keeps_its_tensors_byte_for_byte_where_q4_1_is_chosen(
    source, tmp_path
) -> None:
    """q4_1 is a default candidate: on a Q4_1 source (SmolLM2's) it costs 5.0 bits and
    loses nothing, so the knapsack takes it where the budget allows, and those tensors are
    the source's bytes."""
    folder, calib = source
    src = export_gguf(folder, tmp_path / "src.gguf", "q4_1").path
    result = export_gguf(src, tmp_path / "m.gguf", "q4_k_m", calib=calib, seq_len=16,
                         calib_windows=2, target=GGUFTarget(bits_per_weight=5.2))  # fmt: skip
    kept = [n for n, t in result.mixed["tensor_types"].items() if t == "Q4_1"]
    assert kept, result.mixed["tensor_types"]
    before, after = read_gguf(src), read_gguf(result.path)
    for name in kept:
        assert before.tensor(name).type.name == "Q4_1"
        assert bytes(before.raw(before.tensor(name))) == bytes(after.raw(after.tensor(name)))


@pytest.mark.slow
def test_llama_cpp_runs_the_mixed_file(source, tmp_path) -> None:
    from lowbit_testkit.llama_cpp import tool

    result = _export(source, tmp_path / "m.gguf", 5.5)
    text = tmp_path / "eval.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 60)
    run = subprocess.run([str(tool("llama-perplexity")), "-m", str(result.path), "-f",
                          str(text), "-c", "32", "--chunks", "4", "-t", "2"],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    # each chunk's running perplexity ("[1]283.89,"); llama.cpp's log thread can drop the
    # last lines ("Final estimate") of a run this short when the process exits
    first = re.search(r"\[1\]([0-9.]+),", run.stdout + run.stderr)
    assert first is not None and 1.0 < float(first.group(1)) < 1e4, run.stdout[-2000:]
