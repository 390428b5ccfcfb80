"""`lowbit compare` (issue 16): recipes on the user's model and data beside the original,
with sizes and the Pareto front, as a table, JSON and an HTML report that opens cleanly in
a real browser."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from lowbit.cli.main import main
from lowbit.errors import LowbitWarning
from lowbit.reports.compare import Task, compare, pareto_front
from lowbit_testkit.cli import fails_cleanly


def test_the_pareto_front_keeps_rows_nothing_beats() -> None:
    rows = [
        {"b": 100, "acc": 99.0},  # the original: int8 is as good and smaller
        {"b": 25, "acc": 99.0},
        {"b": 13, "acc": 98.0},
        {"b": 9, "acc": 60.0},  # ternary is smaller and better
        {"b": 7, "acc": 70.0},
        {"b": 7, "acc": 70.0},  # a tie: both stay
    ]
    assert pareto_front(rows, "b", "acc", True) == [False, True, True, False, True, True]
    lower = [{"b": 10, "ppl": 12.0}, {"b": 8, "ppl": 13.0}, {"b": 9, "ppl": 14.0}]
    assert pareto_front(lower, "b", "ppl", False) == [True, True, False]


def test_compare_measures_every_recipe_beside_the_original() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 4)).eval()
    x = torch.randn(256, 32)
    labels = model(x).argmax(-1)  # the original is right on every sample

    def agreement(m: nn.Module) -> dict[str, float]:
        return {"agreement": (m(x).argmax(-1) == labels).float().mean().item()}

    task = Task("agreement", "agreement", True, agreement)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = compare(model, ["w8a16", "w2a16-g16"], task, [x[:64]])
    rows = {r["recipe"]: r for r in report.rows}
    assert list(rows) == ["original", "w8a16", "w2a16-g16"]
    assert rows["original"]["agreement"] == 1.0 and rows["original"]["change"] == 0
    assert rows["original"]["bytes"] > rows["w8a16"]["bytes"] > rows["w2a16-g16"]["bytes"]
    assert rows["w2a16-g16"]["agreement"] < rows["w8a16"]["agreement"]
    assert rows["w2a16-g16"]["pareto"]  # the smallest is always on the front
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_cli_on_the_digits_cnn_writes_the_report(tmp_path, capsys) -> None:
    pytest.importorskip("sklearn")
    out = tmp_path / "report"
    main(["compare", "digits", "--recipes", "int8-static,w4a16-g32", "--out", str(out),
          "--threads", "1", "--json"])  # fmt: skip
    doc = json.loads(capsys.readouterr().out)
    assert [r["recipe"] for r in doc["rows"]] == ["original", "int8-static", "w4a16-g32"]
    assert all(r["accuracy"] > 90 for r in doc["rows"])
    html = (out / "report.html").read_text()
    assert "Pareto front" in html and html.count("data:image/png;base64,") == 1


@pytest.mark.slow
def test_the_report_renders_in_chromium(tmp_path, capsys) -> None:
    pytest.importorskip("sklearn")
    from lowbit_testkit.browser import assert_report_renders

    out = tmp_path / "report"
    main(["compare", "digits", "--recipes", "int8-dynamic,w4a16-g32,ternary", "--out", str(out),
          "--threads", "1"])  # fmt: skip
    capsys.readouterr()
    assert_report_renders(out / "report.html", tmp_path / "compare.png", keep_as="compare.png")


def test_cli_on_a_language_model_measures_perplexity(tmp_path, capsys) -> None:
    from lowbit_testkit.models import tiny_llama_folder

    folder = tiny_llama_folder(tmp_path / "llama")
    text = tmp_path / "text.txt"
    text.write_text("the theta of the heart " * 100)
    with pytest.warns(LowbitWarning, match="only 2 samples"):
        _compare_llama(folder, text)
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [r["recipe"] for r in rows] == ["original", "w8a16", "w4a16-g16-gptq"]
    assert all(r["perplexity"] > 1 for r in rows)
    assert abs(rows[1]["perplexity"] / rows[0]["perplexity"] - 1) < 0.01  # int8: near-lossless


def _compare_llama(folder, text) -> None:
    main(["compare", str(folder), "--recipes", "w8a16,w4a16-g16-gptq", "--data", str(text),
          "--calib", str(text), "--samples", "2", "--seq-len", "32", "--max-tokens", "256",
          "--ctx", "32", "--json"])  # fmt: skip


def test_bad_input_is_one_line(tmp_path, capsys) -> None:
    fails_cleanly(capsys, ["compare", "digits", "--recipes", "w9a16"], "unknown preset", tmp_path)
    missing = str(tmp_path / "none")
    fails_cleanly(capsys, ["compare", missing, "--recipes", "w8a16"], "does not exist", tmp_path)
