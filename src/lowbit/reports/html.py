"""The pieces every lowbit HTML page shares: one style, inline PNG plots and the document
frame, so each page is one self-contained file that reads offline."""

from __future__ import annotations

import base64
import html
import io
from typing import Any

from lowbit.errors import require

STYLE = (
    "body{font-family:sans-serif;margin:2em;max-width:90em}"
    "table{border-collapse:collapse;font-size:85%}td,th{border:1px solid #bbb;padding:3px 8px;"
    "text-align:right}td:first-child,th:first-child{text-align:left}img{max-width:100%}"
)


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display), or a clear error naming the extra."""
    matplotlib = require("matplotlib", "report")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_png(fig: Any) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    pyplot().close(fig)
    return buf.getvalue()


def img(png: bytes, alt: str) -> str:
    """An <img> holding ``png`` inline (a data: URI)."""
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def table(head: list[str], rows: list[list[Any]]) -> str:
    """An HTML table of escaped cells."""
    head_html = "".join(f"<th>{html.escape(str(h))}</th>" for h in head)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head_html}</tr>{body}</table>"


def page(title: str, body: str) -> str:
    """A complete HTML document: inline style, no external resource."""
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )
