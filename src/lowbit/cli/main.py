"""The ``lowbit`` command: one sub-command per module of this package."""

from __future__ import annotations

import re
import sys

import typer

from lowbit.cli import demo_cmd, eval_cmd, explain_cmd, quantize_cmd, size_cmd
from lowbit.errors import LowbitError

app = typer.Typer(
    name="lowbit",
    help="Quantize neural networks, run them on real low-bit kernels, and measure the cost.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("explain")(explain_cmd.explain)
app.command("size")(size_cmd.size)
app.command("demo")(demo_cmd.demo)
app.command("eval")(eval_cmd.eval_model)
app.command("quantize")(quantize_cmd.quantize_model)


_NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def _protect_negative_numbers(args: list[str]) -> list[str]:
    """Let ``lowbit explain 1.1 -0.3`` work: click reads "-0.3" as an option, so a leading
    space is added to negative numbers ("-0.3" -> " -0.3"), which float() still parses."""
    return [" " + a if _NEGATIVE_NUMBER.match(a) else a for a in args]


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app; a LowbitError becomes a one-line message and exit code 2."""
    args = _protect_negative_numbers(sys.argv[1:] if argv is None else argv)
    try:
        app(args=args, prog_name="lowbit")
    except LowbitError as exc:
        typer.secho(f"error: {exc}", err=True, fg="red")
        sys.exit(2)


if __name__ == "__main__":
    main()
