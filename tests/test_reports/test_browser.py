"""The checker of the HTML reports (headless Chromium, installed by `make test`): each kind
of error it must catch, on a page that has only that one, and a clean page. The reports
themselves are checked where they are made: `lowbit compare --out` (test_compare.py) and
`lowbit inspect --html` (test_cli_inspect_model.py)."""

from __future__ import annotations

import pytest

from lowbit_testkit.browser import render

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
