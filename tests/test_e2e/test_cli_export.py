"""``lowbit export``: a GGUF file or Hugging Face folder in, a GGUF file out; bad arguments are
one line, exit 2."""

from __future__ import annotations

import json

import pytest

from lowbit.cli.main import main
from lowbit.eval.bundled import smollm2_gguf_path
from lowbit_testkit.cli import fails_cleanly


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--type", "q9_9"], "unknown GGUF type 'q9_9'"),
        (["--type", "q4_0", "--method", "nope"], "unknown --method 'nope'"),
        (["--type", "q4_0", "--format", "safetensors"], "use gguf, onnx or tflite"),
        (["--format", "gguf"], "--format gguf needs --type"),
    ],
)
def test_bad_arguments_are_one_line(capsys, tmp_path, extra, message):
    args = ["export", str(smollm2_gguf_path()), "--out", str(tmp_path / "m.gguf"), *extra]
    fails_cleanly(capsys, args, message, tmp_path)


def test_a_damaged_imatrix_is_one_line(capsys, tmp_path):
    bad = tmp_path / "imatrix.dat"
    bad.write_bytes(b"\x01\x00\x00\x00\x05\x00\x00\x00blk")  # cut inside the first name
    args = ["export", str(smollm2_gguf_path()), "--type", "q4_0", "--out",
            str(tmp_path / "m.gguf"), "--method", "imatrix", "--imatrix", str(bad)]  # fmt: skip
    fails_cleanly(capsys, args, "not a usable llama.cpp imatrix file (truncated", tmp_path)


def test_out_must_be_a_gguf_file(capsys, tmp_path):
    args = ["export", str(smollm2_gguf_path()), "--type", "q8_0", "--out", str(tmp_path / "m")]
    fails_cleanly(capsys, args, "--out must name a .gguf file", tmp_path)


def test_a_folder_that_is_no_model_is_one_line(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    args = ["export", str(tmp_path / "empty"), "--type", "q8_0", "--out", str(tmp_path / "m.gguf")]
    fails_cleanly(capsys, args, "folder without config.json", tmp_path)


def test_an_unsupported_hf_architecture_is_one_line(capsys, tmp_path):
    folder = tmp_path / "gpt2"
    folder.mkdir()
    config = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}
    (folder / "config.json").write_text(json.dumps(config))
    args = ["export", str(folder), "--type", "f16", "--out", str(tmp_path / "m.gguf")]
    fails_cleanly(capsys, args, "supported: LlamaForCausalLM, BertModel", tmp_path)


@pytest.mark.slow
def test_export_q4_0_prints_sizes_and_type_counts(capsys, tmp_path):
    out = tmp_path / "m.gguf"
    main(["export", str(smollm2_gguf_path()), "--type", "q4_0", "--out", str(out), "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert doc["output_bytes"] == out.stat().st_size
    # SmolLM2: 30 layers x 7 matrices as Q4_0, the tied token_embd as Q8_0, 61 norms F32
    assert doc["tensor_types"] == {"F32": 61, "Q4_0": 210, "Q8_0": 1}
    assert 4.5 < doc["bits_per_weight"] < 6.0


def test_a_cut_gguf_is_one_line_and_nothing_is_written(capsys, tmp_path):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(smollm2_gguf_path().read_bytes()[:5000])
    args = ["export", str(cut), "--type", "q8_0", "--out", str(tmp_path / "m.gguf")]
    fails_cleanly(capsys, args, str(cut), tmp_path)
