"""ComparisonReport renders the same rows as markdown, JSON and a self-contained HTML page."""

from __future__ import annotations

import json

from lowbit.reports import Column, ComparisonReport


def _report() -> ComparisonReport:
    return ComparisonReport(
        "demo <title>",
        [
            Column("method", "method"),
            Column("acc", "accuracy %", lambda v: f"{v:.1f}"),
            Column("size", "bytes", lambda v: f"{v:,}"),
        ],
        rows=[
            {"method": "fp32", "acc": 99.44, "size": 91192},
            {"method": "int8", "acc": 99.17, "size": 23904},
            {"method": "int8 QAT", "acc": 99.17, "size": 23904},
        ],
        notes=["a note"],
    )


def test_markdown_json_and_html(tmp_path) -> None:
    report = _report()
    md = report.to_markdown()
    assert "| fp32 | 99.4 | 91,192 |" in md and "- a note" in md
    assert json.loads(json.dumps(report.to_json()))["rows"][1]["size"] == 23904
    html = report.to_html(b"\x89PNG")
    assert "&lt;title&gt;" in html and "<td>91,192</td>" in html
    assert "data:image/png;base64," in html


def test_write_is_complete_and_plots(tmp_path) -> None:
    files = _report().write(
        tmp_path,
        plot={"x": "size", "y": "acc", "label": "method", "xlabel": "bytes", "ylabel": "accuracy"},
    )
    assert sorted(f.name for f in files) == [
        "accuracy_vs_size.png",
        "report.html",
        "report.json",
        "report.md",
    ]
    assert (tmp_path / "accuracy_vs_size.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind
