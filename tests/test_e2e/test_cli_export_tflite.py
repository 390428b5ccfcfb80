"""``lowbit export digits --format tflite``: the demo CNN as an int8 .tflite that LiteRT runs
at lowbit's accuracy; any other MODEL is one line, exit 1, nothing written."""

from __future__ import annotations

import json

import pytest

from lowbit.cli.main import main
from lowbit_testkit.cli import fails_cleanly


def test_a_folder_model_is_refused_with_the_python_route(capsys, tmp_path):
    args = ["export", str(tmp_path), "--format", "tflite", "--out", str(tmp_path / "m.tflite")]
    fails_cleanly(capsys, args, "lowbit.export_tflite(model, example_inputs", tmp_path)


def test_out_must_be_a_tflite_file(capsys, tmp_path):
    args = ["export", "digits", "--format", "tflite", "--out", str(tmp_path / "m.onnx")]
    fails_cleanly(capsys, args, "--out must name a .tflite file", tmp_path)


@pytest.mark.slow
def test_digits_runs_in_litert_at_lowbits_accuracy(capsys, tmp_path):
    out = tmp_path / "digits.tflite"
    main(["export", "digits", "--format", "tflite", "--out", str(out), "--json"])
    doc = json.loads(capsys.readouterr().out)
    print(f"lowbit {doc['accuracy_lowbit']:.2f}%, LiteRT {doc['accuracy_litert']:.2f}%, "
          f"SQNR {doc['sqnr_db']} dB")  # fmt: skip
    assert out.read_bytes()[4:8] == b"TFL3"
    assert doc["output_bytes"] == out.stat().st_size
    assert doc["op_counts"]["CONV_2D"] == 2 and doc["op_counts"]["FULLY_CONNECTED"] == 2
    assert abs(doc["accuracy_litert"] - doc["accuracy_lowbit"]) <= 0.5
    assert doc["sqnr_db"] >= 30
