"""Printing results: rich tables for people, one JSON document for programs (--json)."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.table import Table


def print_json(document: Any) -> None:
    """Write exactly one JSON document to stdout."""
    sys.stdout.write(json.dumps(document, indent=2) + "\n")


def _looks_numeric(value: Any) -> bool:
    text = str(value).strip()
    return text == "" or isinstance(value, int | float) or text[0].isdigit() or text[0] in "+-."


def print_table(
    title: str, columns: list[str], rows: list[list[Any]], min_width: int = 100
) -> None:
    """Print a table to the terminal (plain text when stdout is not a terminal), at least
    ``min_width`` characters wide so that piped output is not cut."""
    table = Table(title=title)
    for i, col in enumerate(columns):
        numeric = i > 0 and all(_looks_numeric(row[i]) for row in rows)
        table.add_column(col, justify="right" if numeric else "left", no_wrap=i == 0)
    for row in rows:
        table.add_row(*[str(v) for v in row])
    Console(width=max(min_width, Console().width)).print(table)
