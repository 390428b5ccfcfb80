"""What every benchmark script prints: markdown tables for the terminal, or one JSON document
with ``--json``, built by one ``Report`` and one table renderer.

Typical use::

    report = Report(checks=[])               # checks: PASS/FAIL lines (None: no such key)
    report.add(title, markdown_text, json_rows)
    report.notes.update(environment_notes(...))
    report.print(as_json=args.json)

Text output: the tables separated by blank lines, a blank line, the check lines, then the
notes as ``key: value`` lines. JSON: ``{"command", "tables": {title: rows}, ["acceptance"],
"notes"}``.
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field


def command_line() -> str:
    """The exact command that ran this script, for pasting under a table."""
    return " ".join(shlex.quote(a) for a in [sys.executable.split("/")[-1], *sys.argv])


def table_row(cells: Sequence[object]) -> str:
    """One markdown table line: ``| a | b |``."""
    return "| " + " | ".join(str(c) for c in cells) + " |"


def markdown_table(
    header: Sequence[str],
    rows: Sequence[Sequence[object]] = (),
    *,
    title: str = "",
    footer: Sequence[str] = (),
) -> str:
    """``### title``, the header, its ``---`` line, the rows, then (after a blank line) the
    footer lines (command, notes). ``rows=()`` gives the head alone, for scripts that print
    rows as they come (``table_row``)."""
    lines = [f"### {title}", ""] if title else []
    lines += [table_row(header), table_row(["---"] * len(header))]
    lines += [table_row(r) for r in rows]
    if footer:
        lines += ["", *footer]
    return "\n".join(lines)


@dataclass
class Report:
    """The tables of one benchmark run, their JSON rows, PASS/FAIL checks and notes."""

    command: str = field(default_factory=command_line)
    texts: list[str] = field(default_factory=list)
    tables: dict[str, list] = field(default_factory=dict)
    checks: list[str] | None = None
    notes: dict[str, str] = field(default_factory=dict)

    def add(self, title: str, text: str, rows: list) -> None:
        """One table: its markdown ``text`` and its JSON ``rows`` under ``title``."""
        self.texts.append(text)
        self.tables[title] = rows

    def to_json(self) -> str:
        doc: dict = {"command": self.command, "tables": self.tables}
        if self.checks is not None:
            doc["acceptance"] = self.checks
        doc["notes"] = self.notes
        return json.dumps(doc, indent=2)

    def render(self) -> str:
        lines = [*(self.checks or []), *(f"{k}: {v}" for k, v in self.notes.items())]
        return "\n\n".join(self.texts) + "\n\n" + "".join(f"{line}\n" for line in lines)

    def print(self, *, as_json: bool = False) -> None:
        """Print the JSON document or the rendered tables to stdout."""
        if as_json:
            print(self.to_json())
        else:
            print(self.render(), end="")
