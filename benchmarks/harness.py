"""Timing harness for lowbit's benchmarks: interleaved samples, paired ratios, one table.

The machine is shared and its speed drifts, so every benchmark times the thing and its
anchor in the same process, round-robin (A B C A B C ...) after warm-up, with
``torch.set_num_threads`` pinned, and reports ratios computed per round (the samples of one
round ran seconds apart, so drift cancels) as median with min and max.

Typical use::

    res = compare({"lowbit": f, "gguf": g}, baseline="gguf", warmup=3, repeats=15,
                  work=n_params)
    rows = [res.row("int8", "lowbit", "gguf", unit="Mparams/s")]
    report.add(title, format_table(rows, command=report.command, title=title),
               [asdict(r) for r in rows])       # _report.Report: tables or --json
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from _report import markdown_table


@dataclass
class CaseResult:
    """Samples of one case. ``times`` are seconds, one per round, in round order."""

    name: str
    times: list[float]
    work: float | None = None  # units of work per call (params, tokens...) for throughput

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def throughput(self) -> float | None:
        """Work per second at the median time (None without a work size)."""
        return None if self.work is None else self.work / self.median


@dataclass
class Row:
    """One table row: a lowbit case against its anchor. ratio = anchor time / lowbit time
    per round, so > 1 means lowbit is faster."""

    case: str
    lowbit: str
    anchor: str
    lowbit_name: str
    anchor_name: str
    ratio_median: float
    ratio_min: float
    ratio_max: float
    lowbit_value: float
    anchor_value: float
    unit: str


@dataclass
class Comparison:
    """Result of ``compare``: per-case samples plus the settings they were taken under."""

    cases: dict[str, CaseResult]
    baseline: str
    threads: int
    warmup: int
    repeats: int
    notes: dict[str, str] = field(default_factory=dict)

    def ratios(self, case: str, against: str | None = None) -> list[float]:
        """Per-round speed-ups of ``case`` over ``against`` (default: the baseline)."""
        ref = self.cases[against or self.baseline].times
        return [r / c for r, c in zip(ref, self.cases[case].times, strict=True)]

    def ratio(self, case: str, against: str | None = None) -> tuple[float, float, float]:
        """(median, min, max) of the per-round speed-ups of ``case`` over ``against``."""
        r = self.ratios(case, against)
        return statistics.median(r), min(r), max(r)

    def row(self, label: str, lowbit: str, anchor: str, *, unit: str = "ms") -> Row:
        """A table row for ``lowbit`` vs ``anchor``; unit "ms" shows median time, any other
        unit shows throughput scaled by its prefix (e.g. "Mparams/s" divides by 1e6)."""
        med, lo, hi = self.ratio(lowbit, anchor)
        a, b = self.cases[lowbit], self.cases[anchor]
        return Row(
            label,
            _fmt(a, unit),
            _fmt(b, unit),
            lowbit,
            anchor,
            med,
            lo,
            hi,
            _value(a, unit),
            _value(b, unit),
            unit,
        )


_PREFIX = {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9}


def _value(case: CaseResult, unit: str) -> float:
    if unit == "ms":
        return case.median * 1e3
    if case.throughput is None:
        raise ValueError(f"case {case.name!r} has no work size; pass work= to compare()")
    prefix = unit[0] if unit[0] in _PREFIX and len(unit) > 1 and unit[1].isalpha() else ""
    return case.throughput / _PREFIX[prefix]


def _fmt(case: CaseResult, unit: str) -> str:
    v = _value(case, unit)
    return f"{v:.3g} {unit}" if v < 100 else f"{v:.0f} {unit}"


def compare(
    cases: dict[str, Callable[[], object]],
    baseline: str,
    *,
    warmup: int = 3,
    repeats: int = 15,
    threads: int = 2,
    work: float | dict[str, float] | None = None,
) -> Comparison:
    """Time no-argument callables round-robin (A B A B ...) after ``warmup`` rounds.

    Args:
        cases: name -> callable; each round calls every case once, in dict order.
        baseline: the case ratios refer to by default.
        warmup: untimed rounds first (compilation, caches, allocator).
        repeats: timed rounds.
        threads: passed to torch.set_num_threads for the whole measurement (restored after).
        work: units of work per call (one number for all cases, or per case) for throughput.
    """
    if baseline not in cases:
        raise ValueError(f"baseline {baseline!r} is not one of the cases {list(cases)}")
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for _ in range(warmup):
            for fn in cases.values():
                fn()
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(repeats):
            for name, fn in cases.items():
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)
    works = work if isinstance(work, dict) else dict.fromkeys(cases, work)
    results = {n: CaseResult(n, t, works.get(n)) for n, t in times.items()}
    return Comparison(results, baseline, threads, warmup, repeats)


def format_table(rows: Sequence[Row], *, command: str, title: str = "") -> str:
    """Markdown table: case | lowbit | anchor | ratio (median, min-max) | + the command."""
    cells = [
        [
            r.case,
            f"{r.lowbit} ({r.lowbit_name})",
            f"{r.anchor} ({r.anchor_name})",
            f"{r.ratio_median:.2f}x ({r.ratio_min:.2f}–{r.ratio_max:.2f})",
        ]
        for r in rows
    ]
    header = ["case", "lowbit", "anchor", "ratio (median, min–max)"]
    return markdown_table(header, cells, title=title, footer=[f"command: `{command}`"])


def add_args(parser: argparse.ArgumentParser, *, warmup: int = 3, repeats: int = 15) -> None:
    """The options every benchmark shares: --warmup, --repeats, --threads, --json."""
    parser.add_argument("--warmup", type=int, default=warmup, help="untimed rounds")
    parser.add_argument("--repeats", type=int, default=repeats, help="timed rounds")
    parser.add_argument(
        "--threads", type=int, nargs="+", default=[2], help="torch threads; one table per value"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
