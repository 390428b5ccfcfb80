"""A side-by-side comparison of quantized variants against the original: one row per method,
rendered as markdown, as an HTML page with an accuracy-vs-size plot, or as JSON."""

from __future__ import annotations

import html
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lowbit.atomic import atomic_write_bytes, atomic_write_text
from lowbit.reports.html import figure_png, img, page, pyplot, table


@dataclass(frozen=True)
class Column:
    """A report column: the row key it shows, its header, and how a value is printed."""

    key: str
    header: str
    fmt: Callable[[Any], str] = str


@dataclass
class ComparisonReport:
    """Rows (dicts) with the columns to show; ``notes`` are printed under the table."""

    title: str
    columns: list[Column]
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def cells(self) -> list[list[str]]:
        """The formatted table body."""
        return [[c.fmt(row.get(c.key)) for c in self.columns] for row in self.rows]

    def to_markdown(self) -> str:
        """A markdown document: title, table, notes."""
        header = "| " + " | ".join(c.header for c in self.columns) + " |"
        rule = "|" + "|".join("---" for _ in self.columns) + "|"
        body = ["| " + " | ".join(cells) + " |" for cells in self.cells()]
        notes = [f"- {n}" for n in self.notes]
        return "\n".join([f"# {self.title}", "", header, rule, *body, "", *notes, ""])

    def to_json(self) -> dict[str, Any]:
        """``{"title", "rows": [...], "notes": [...]}``."""
        return {"title": self.title, "rows": self.rows, "notes": self.notes}

    def plot_png(
        self, x: str, y: str, label: str, xlabel: str, ylabel: str, front: str | None = None
    ) -> bytes:
        """A scatter plot of two row keys (e.g. size vs accuracy), one labelled point per row;
        ``front`` names a boolean row key whose rows are joined by a line (a Pareto front)."""
        fig, ax = pyplot().subplots(figsize=(8, 5), dpi=110)
        points: dict[tuple[float, float], list[str]] = {}
        for row in self.rows:
            if row.get(x) is not None and row.get(y) is not None:
                points.setdefault((float(row[x]), float(row[y])), []).append(str(row[label]))
        # methods at the same point share one label; neighbours alternate above and below
        for i, ((px, py), names) in enumerate(sorted(points.items())):
            ax.scatter(px, py)
            ax.annotate(
                ", ".join(names),
                (px, py),
                textcoords="offset points",
                xytext=(4, 6 if i % 2 == 0 else -12),
                fontsize=7,
            )
        if front is not None:
            line = sorted(
                (float(r[x]), float(r[y]))
                for r in self.rows
                if r.get(front) and r.get(y) is not None
            )
            ax.plot([p[0] for p in line], [p[1] for p in line], "--", color="#c44e52",
                    label="Pareto front", zorder=0)  # fmt: skip
            ax.legend(fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.set_title(self.title, fontsize=10)
        return figure_png(fig)

    def to_html(self, plot_png: bytes | None = None) -> str:
        """A self-contained HTML page: the table, the notes and the plot (inline PNG)."""
        notes = "".join(f"<li>{html.escape(n)}</li>" for n in self.notes)
        plot = "" if plot_png is None else img(plot_png, "accuracy vs size")
        head = [c.header for c in self.columns]
        return page(self.title, f"{table(head, self.cells())}<ul>{notes}</ul>{plot}")

    def write(self, folder: str | Path, plot: dict[str, str] | None = None) -> list[Path]:
        """Write report.md, report.json and report.html (with the plot when ``plot`` names
        its x/y/label keys and axis labels) into ``folder``, atomically."""
        folder = Path(folder)
        png = self.plot_png(**plot) if plot else None
        return [
            atomic_write_text(folder / "report.md", self.to_markdown()),
            atomic_write_text(folder / "report.json", json.dumps(self.to_json(), indent=2)),
            atomic_write_text(folder / "report.html", self.to_html(png)),
            *([atomic_write_bytes(folder / "accuracy_vs_size.png", png)] if png else []),
        ]
