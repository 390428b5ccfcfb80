"""The HTML reports open in a real browser (headless Chromium, installed by `make test`)
without console errors, with their table and plot in the DOM after load. The first test
checks the checker: each kind of error it must catch, on a page that has only that one."""

from __future__ import annotations

import re

import pytest

from lowbit.reports import Column, ComparisonReport
from lowbit_testkit.browser import assert_report_renders, render

pytestmark = pytest.mark.slow  # one Chromium start per page: about a second each

PAGES = {
    "clean": ("<p>fine</p>", None),
    "exception": ('<script>throw new Error("boom")</script>', "Uncaught: Error: boom"),
    "console.error": ('<script>console.error("x")</script>', "console.error: x"),
    "missing image": (
        '<img src="missing.png">',
        "Failed to load resource: net::ERR_FILE_NOT_FOUND",
    ),
}


@pytest.mark.parametrize("name", list(PAGES))
def test_console_errors_are_caught(tmp_path, name) -> None:
    body, error = PAGES[name]
    page = tmp_path / "page.html"
    page.write_text(f"<!doctype html><html><body>{body}</body></html>")
    result = render(page, tmp_path / "page.png")
    if error is None:
        assert result.console_errors == []
        assert "<p>fine</p>" in result.dom
    else:
        assert len(result.console_errors) == 1, result.console_errors
        assert result.console_errors[0].startswith(error), result.console_errors
    assert result.screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_comparison_report_renders(tmp_path) -> None:
    report = ComparisonReport(
        "int8 vs fp32",
        [
            Column("method", "method"),
            Column("acc", "accuracy %", lambda v: f"{v:.1f}"),
            Column("size", "bytes", lambda v: f"{v:,}"),
        ],
        rows=[
            {"method": "fp32", "acc": 99.44, "size": 91192},
            {"method": "int8", "acc": 99.17, "size": 23904},
            {"method": "int4 g32", "acc": 98.61, "size": 13120},
        ],
        notes=["three rows, one plot"],
    )
    plot = {"x": "size", "y": "acc", "label": "method", "xlabel": "bytes", "ylabel": "accuracy"}
    report.write(tmp_path, plot=plot)
    result = assert_report_renders(
        tmp_path / "report.html",
        tmp_path / "report.png",
        keep_as="comparison_report.png",
    )
    assert len(re.findall(r"<tr[\s>]", result.dom)) == 4  # the header and three rows
    assert "int4 g32" in result.dom
