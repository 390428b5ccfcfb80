"""`lowbit inspect MODEL` (issue 16): every layer's statistics, each candidate's SQNR and
the estimated and measured sensitivity, as a table, JSON, or an HTML page that opens in a
real browser without errors; a lowbit save folder lists its layers' formats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lowbit.cli.main import main
from lowbit_testkit.cli import fails_cleanly
from lowbit_testkit.models import tiny_llama_folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("inspect")
    calib = root / "calib.txt"
    calib.write_text("the theta of the heart " * 200)
    return tiny_llama_folder(root / "src", hidden_size=64, intermediate_size=128), calib


def _inspect(folder: Path, calib: Path, *extra: str) -> list[str]:
    return ["inspect", str(folder), "--calib", str(calib), "--samples", "2", "--seq-len", "32",
            *extra]  # fmt: skip


def test_json_has_every_layer_and_candidate(folder, capsys) -> None:
    source, calib = folder
    main([*_inspect(source, calib), "--json", "--candidates", "w8a16,w4a16-g32,float"])
    doc = json.loads(capsys.readouterr().out)
    names = [layer["name"] for layer in doc["layers"]]
    assert names[-1] == "embeddings" and "model.layers.0.mlp.down_proj" in names
    assert doc["distance"] == "kl" and doc["candidates"] == ["w8a16", "w4a16-g32", "float"]
    for layer in doc["layers"]:
        options = layer["options"]
        assert set(options) == {"w8a16", "w4a16-g32", "float"}
        assert options["w8a16"]["sqnr_db"] > options["w4a16-g32"]["sqnr_db"]
        assert options["w4a16-g32"]["measured"] is None  # the first candidate is measured
        assert options["w8a16"]["measured"] is not None
        assert layer["outlier_ratio"] >= 1.0
        # token ids have no float range
        assert (layer["input_range"] is None) == (layer["name"] == "embeddings")


def test_table_and_html_page(folder, tmp_path, capsys) -> None:
    source, calib = folder
    page = tmp_path / "inspect.html"
    main([*_inspect(source, calib), "--html", str(page)])
    out = capsys.readouterr().out
    assert "model.layers.1.self_attn.q_proj" in out and "D meas. w4a16-g128" in out
    text = page.read_text()
    assert text.count("data:image/png;base64,") >= 3  # sensitivity, SQNR, histograms
    assert "<table>" in text and "http" not in text.replace("http-equiv", "")


@pytest.mark.slow
def test_the_html_page_renders_in_chromium(folder, tmp_path) -> None:
    from lowbit_testkit.browser import assert_report_renders

    source, calib = folder
    page = tmp_path / "inspect.html"
    main([*_inspect(source, calib), "--html", str(page), "--json"])
    assert_report_renders(page, tmp_path / "inspect.png", min_plots=3, keep_as="inspect.png")


def test_a_lowbit_folder_lists_its_formats(folder, tmp_path, capsys) -> None:
    source, _ = folder
    out = tmp_path / "q"
    main(["quantize", str(source), "--recipe", "w4a16-g32", "--out", str(out), "--json"])
    capsys.readouterr()
    main(["inspect", str(out), "--json"])
    rows = json.loads(capsys.readouterr().out)["layers"]
    assert any(r["module"] == "model.layers.0.mlp.up_proj" and "int4" in r["weight"] for r in rows)


def test_bad_options_fail_in_one_line(folder, capsys, tmp_path) -> None:
    source, calib = folder
    bad_measure = [*_inspect(source, calib), "--measure", "w5a16"]
    fails_cleanly(capsys, bad_measure, "is not one of", tmp_path)
    fails_cleanly(capsys, ["inspect", str(tmp_path / "nothing")], "does not exist", tmp_path)


def _onnx_file(path: Path) -> Path:
    """A graph with a float MatMul weight (K=64, N=32) and an int8 MatMulInteger weight."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((64, 32)).astype(np.float32), "w")
    q = numpy_helper.from_array(rng.integers(-127, 128, (32, 16)).astype(np.int8), "q")
    zp = numpy_helper.from_array(np.zeros(16, np.int8), "q_zero")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("DynamicQuantizeLinear", ["h"], ["hq", "hs", "hz"]),
        helper.make_node("MatMulInteger", ["hq", "q", "hz", "q_zero"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [1, 16])], [w, q, zp],
    )  # fmt: skip
    onnx.save(helper.make_model(graph), path)
    return path


def test_an_onnx_file_lists_its_weights(tmp_path, capsys) -> None:
    pytest.importorskip("onnx")
    path = _onnx_file(tmp_path / "m.onnx")
    main(["inspect", str(path), "--json"])
    weights = {w["name"]: w for w in json.loads(capsys.readouterr().out)["weights"]}
    assert weights["w"]["op"] == "MatMul" and weights["w"]["shape"] == [32, 64]  # (out, in)
    assert weights["w"]["sqnr_db"]["w8a16"] > weights["w"]["sqnr_db"]["w2a16-g64"] > 0
    assert weights["q"]["op"] == "MatMulInteger" and weights["q"]["stored_bits"] == pytest.approx(
        8 * (32 * 16 + 16) / (32 * 16)
    )
    main(["inspect", str(path)])
    assert "stored: 8.25 bits/weight" in capsys.readouterr().out  # codes + zero points
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    fails_cleanly(capsys, ["inspect", str(tmp_path / "bad.onnx")], "not a readable ONNX", tmp_path)
