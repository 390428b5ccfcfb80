"""``lowbit demo``: the main demo (digits CNN, every method, side by side)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from lowbit.cli.output import print_json, print_table


def demo(
    out: Annotated[Path, typer.Option(help="Folder for report.md/.html/.json.")] = Path(
        "lowbit-demo"
    ),
    threads: Annotated[
        int, typer.Option(min=1, help="torch threads for every measurement (at least 1).")
    ] = 2,
    repeats: Annotated[int, typer.Option(help="Timed rounds per variant.")] = 30,
    json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
) -> None:
    """Quantize a small CNN on sklearn's digits with every method and compare accuracy,
    size and latency with fp32; writes report.md and report.html (with a plot)."""
    import os

    from lowbit.demo.run import run_demo, write_demo_report

    if not json:
        os.environ.setdefault("LOWBIT_PROGRESS", "1")
    report = run_demo(threads=threads, repeats=repeats)
    files = write_demo_report(report, out)
    if json:
        print_json({**report.to_json(), "files": [str(f) for f in files]})
        return
    print_table(report.title, [c.header for c in report.columns], report.cells())
    console = Console()
    for note in report.notes:
        console.print(f"- {note}")
    console.print(f"report written to {', '.join(str(f) for f in files)}")
