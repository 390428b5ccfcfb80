"""``explain(model)``: which kernel each quantized layer runs, and why.

Modules are found by duck typing (anything with a ``kernel_report()`` method returning a
dict with op, weight, mode, kernel, why, considered), so this layer never imports nn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

_COLUMNS = ("module", "op", "weight", "mode", "kernel", "why")


@dataclass(frozen=True)
class KernelRow:
    """One layer: its name, op, weight description, mode, chosen kernel and the reason."""

    module: str
    op: str
    weight: str
    mode: str
    kernel: str
    why: str
    considered: tuple = ()

    def cells(self) -> tuple[str, ...]:
        return tuple(str(getattr(self, c)) for c in _COLUMNS)


@dataclass(frozen=True)
class KernelTable:
    """The rows of ``explain``; ``str()`` gives a markdown table, rich renders ``__rich__``."""

    rows: tuple[KernelRow, ...]

    def __iter__(self):
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def to_markdown(self) -> str:
        """A GitHub markdown table (pipes in cells escaped)."""
        lines = ["| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
        for row in self.rows:
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in row.cells()) + " |")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_markdown()

    def __rich__(self) -> Any:
        from rich.table import Table

        table = Table(title="lowbit kernels")
        for col in _COLUMNS:
            table.add_column(col, overflow="fold")
        for row in self.rows:
            table.add_row(*row.cells())
        return table


def explain(model: torch.nn.Module) -> KernelTable:
    """One row per module of ``model`` that reports a kernel (``kernel_report()``), and one
    per layer ``lowbit.quantize`` left in float (``model.lowbit_float_layers``: name ->
    reason), in ``named_modules()`` order; the root module is called "(root)"."""
    rows = []
    float_layers = getattr(model, "lowbit_float_layers", None) or {}
    for name, module in model.named_modules():
        if (name or "(root)") in float_layers:
            dtype = next(module.parameters(recurse=False), torch.empty(0)).dtype
            rows.append(
                KernelRow(
                    module=name or "(root)",
                    op=type(module).__name__,
                    weight=str(dtype).removeprefix("torch."),
                    mode="float",
                    kernel="torch (float)",
                    why=float_layers[name or "(root)"],
                )
            )
            continue
        report = getattr(module, "kernel_report", None)
        if callable(report):
            info = report()
            rows.append(
                KernelRow(
                    module=name or "(root)",
                    op=info["op"],
                    weight=info["weight"],
                    mode=info["mode"],
                    kernel=info["kernel"],
                    why=info["why"],
                    considered=tuple(info.get("considered", ())),
                )
            )
    return KernelTable(tuple(rows))
