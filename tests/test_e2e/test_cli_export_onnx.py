"""``lowbit export --format onnx``: a lowbit save folder or Hugging Face encoder folder in, a
verified .onnx file out; bad input is one line, exit 1, nothing written."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from torch import nn

import lowbit
from lowbit.cli.main import main
from lowbit.eval.bundled import minilm_path
from lowbit_testkit.cli import fails_cleanly

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def test_out_must_be_an_onnx_file(capsys, tmp_path):
    args = ["export", str(minilm_path()), "--format", "onnx", "--out", str(tmp_path / "m.bin")]
    fails_cleanly(capsys, args, "--out must name a .onnx file", tmp_path)


def test_missing_model_is_one_line(capsys, tmp_path):
    args = ["export", str(tmp_path / "nope"), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]
    fails_cleanly(capsys, args, "no such file or folder", tmp_path)


def test_unknown_recipe_is_one_line(capsys, tmp_path):
    args = ["export", str(minilm_path()), "--format", "onnx", "--recipe", "w9a9",
            "--out", str(tmp_path / "m.onnx")]  # fmt: skip
    fails_cleanly(capsys, args, "unknown preset 'w9a9'", tmp_path)


def test_bad_target_is_one_line(capsys, tmp_path):
    args = ["export", str(minilm_path()), "--format", "onnx", "--target", "tpu",
            "--out", str(tmp_path / "m.onnx")]  # fmt: skip
    fails_cleanly(capsys, args, "target 'tpu' is not one of", tmp_path)


def test_a_save_folder_without_its_architecture_is_one_line(capsys, tmp_path):
    model = nn.Sequential(nn.Linear(16, 8))
    lowbit.save(lowbit.quantize(model, "int8-dynamic"), tmp_path / "saved")
    args = ["export", str(tmp_path / "saved"), "--format", "onnx", "--out",
            str(tmp_path / "m.onnx")]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "holds a plain PyTorch model: pass its architecture" in err
    assert not (tmp_path / "m.onnx").exists()


def test_missing_extra_names_the_install_command(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript -> ImportError
    args = ["export", str(minilm_path()), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]
    fails_cleanly(capsys, args, "pip install 'lowbit[onnx]'", tmp_path)


@pytest.mark.slow
def test_minilm_recipe_export_prints_json(capsys, tmp_path):
    out = tmp_path / "minilm.onnx"
    main(["export", str(minilm_path()), "--format", "onnx", "--recipe", "w4a16-g32",
          "--out", str(out), "--json"])  # fmt: skip
    doc = json.loads(capsys.readouterr().out)
    assert out.is_file() and doc["output_bytes"] == out.stat().st_size
    assert doc["op_counts"]["MatMulNBits"] >= 36
    assert doc["sqnr_db"] >= 30
    # the file takes any padded batch
    from lowbit.export.onnx.runtime import ort_session

    session = ort_session(out)
    names = [i.name for i in session.get_inputs()]
    ids = torch.randint(1000, 2000, (3, 11))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    outputs = session.run(None, {n: feeds[n].numpy() for n in names})
    assert outputs[0].shape == (3, 11, 384)


def _tiny_bert_folder(folder):
    """A 2-layer BertModel of hidden size 32 with MiniLM's tokenizer, saved as an HF folder."""
    import shutil

    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64)  # fmt: skip
    transformers.BertModel(config).eval().save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (minilm_path() / name).is_file():
            shutil.copy(minilm_path() / name, folder / name)
    return folder


def test_skip_leaves_the_layers_onnx_cannot_express_in_float(capsys, tmp_path):
    folder = _tiny_bert_folder(tmp_path / "bert")
    out = tmp_path / "bert.onnx"
    args = ["export", str(folder), "--format", "onnx", "--recipe", "nf4", "--out", str(out)]
    capsys.readouterr()  # save_pretrained's own bar
    fails_cleanly(capsys, args, "--skip NAME", tmp_path)
    assert not out.exists()
    main([*args, "--skip", "encoder.layer.*", "--skip", "pooler.dense", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert out.is_file() and doc["sqnr_db"] >= 30
    assert "encoder.layer.0.attention.self.query" in doc["float_layers"]
    assert "MatMulNBits" not in doc["op_counts"]


@pytest.mark.filterwarnings("ignore:calibration data holds only")
def test_a_calibrated_recipe_calibrates_on_text_windows(capsys, tmp_path):
    """int8-dynamic-smooth (and GPTQ/AWQ/SmoothQuant) quantize on --calib's windows, or the
    bundled text's; without them quantize() would stop asking for calib_data."""
    folder = _tiny_bert_folder(tmp_path / "bert")
    out = tmp_path / "bert.onnx"
    capsys.readouterr()
    main(["export", str(folder), "--format", "onnx", "--recipe", "int8-dynamic-smooth",
          "--calib-windows", "2", "--seq-len", "16", "--out", str(out), "--json"])  # fmt: skip
    doc = json.loads(capsys.readouterr().out)
    assert out.is_file() and doc["sqnr_db"] >= 30
    assert doc["op_counts"]["DynamicQuantizeLinear"] >= 8
    missing = str(tmp_path / "missing.txt")
    args = ["export", str(folder), "--format", "onnx", "--recipe", "int8-dynamic-smooth",
            "--calib", missing, "--out", str(tmp_path / "m.onnx")]  # fmt: skip
    fails_cleanly(capsys, args, "missing.txt", tmp_path)


def test_skip_is_refused_for_gguf(capsys, tmp_path):
    args = ["export", str(minilm_path()), "--type", "q8_0", "--skip", "x",
            "--out", str(tmp_path / "m.gguf")]  # fmt: skip
    fails_cleanly(capsys, args, "--skip is for --format onnx", tmp_path)


def test_a_causal_lm_folder_exports_as_a_decoder(capsys, tmp_path):
    from lowbit_testkit.models import tiny_llama_folder

    folder = tiny_llama_folder(tmp_path / "llama")
    out = tmp_path / "llama.onnx"
    main(["export", str(folder), "--format", "onnx", "--recipe", "w4a16-g32",
          "--out", str(out), "--json"])  # fmt: skip
    doc = json.loads(capsys.readouterr().out)
    assert out.is_file() and doc["output_bytes"] == out.stat().st_size
    assert doc["kind"] == "decoder" and doc["same_tokens"] is True
    assert doc["op_counts"]["MatMulNBits"] == 2 * 7 + 1  # 7 linears per block, and lm_head
    args = ["export", str(folder), "--format", "onnx", "--skip", "x", "--out", str(out)]
    fails_cleanly(capsys, args, "skip= is not taken by the causal-LM decoder", tmp_path)
