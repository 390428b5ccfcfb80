"""The ``lowbit`` command: one sub-command per module of this package."""

from __future__ import annotations

import os
import re
import sys
from typing import NoReturn

import typer

from lowbit.cli import (
    compare_cmd,
    demo_cmd,
    eval_cmd,
    explain_cmd,
    export_cmd,
    inspect_cmd,
    quantize_cmd,
    size_cmd,
)
from lowbit.errors import LowbitError

app = typer.Typer(
    name="lowbit",
    help="Quantize neural networks, run them on real low-bit kernels, and measure the cost.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("explain")(explain_cmd.explain)
app.command("compare")(compare_cmd.compare)
app.command("size")(size_cmd.size)
app.command("inspect")(inspect_cmd.inspect)
app.command("demo")(demo_cmd.demo)
app.command("eval")(eval_cmd.eval_model)
app.command("quantize")(quantize_cmd.quantize_model)
app.command("export")(export_cmd.export_model)


_NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def _protect_negative_numbers(args: list[str]) -> list[str]:
    """Let ``lowbit explain 1.1 -0.3`` work: click reads "-0.3" as an option, so a leading
    space is added to negative numbers ("-0.3" -> " -0.3"), which float() still parses."""
    return [" " + a if _NEGATIVE_NUMBER.match(a) else a for a in args]


# typer >= 0.22 vendors click (typer._click), older typer uses click itself: take the
# exception classes from typer's own BadParameter so both work.
_CLICK = {cls.__name__: cls for cls in typer.BadParameter.__mro__}
_USAGE_ERROR, _CLICK_EXCEPTION = _CLICK["UsageError"], _CLICK["ClickException"]
_NO_ARGS = getattr(sys.modules[_USAGE_ERROR.__module__], "NoArgsIsHelpError", ())


def _fail(message: str, code: int) -> NoReturn:
    typer.secho(f"error: {message}", err=True, fg="red")
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app; a LowbitError or a bad option becomes one line on stderr
    (the problem and the fix), never a traceback or a usage box. Exit codes follow the usual
    convention: 2 for a command line the parser refuses, 1 for a run that failed on its
    input (a bad file, a wrong path, a model that cannot do the task)."""
    args = _protect_negative_numbers(sys.argv[1:] if argv is None else argv)
    if "--json" in args:
        os.environ["LOWBIT_PROGRESS"] = "0"  # one JSON document and nothing else
    try:
        code = app(args=args, prog_name="lowbit", standalone_mode=False)
    except _NO_ARGS as exc:  # bare `lowbit`: the help, as before
        typer.echo(exc.ctx.get_help() if exc.ctx else str(exc))
        sys.exit(2)
    except _USAGE_ERROR as exc:
        command = exc.ctx.command_path if exc.ctx else "lowbit"
        _fail(f"{exc.format_message()} (see '{command} --help')", 2)
    except _CLICK_EXCEPTION as exc:
        _fail(exc.format_message(), exc.exit_code)
    except typer.Abort:
        _fail("aborted", 1)
    except LowbitError as exc:
        _fail(str(exc), 1)
    if isinstance(code, int) and code:
        sys.exit(code)  # typer.Exit(code) raised by a command


if __name__ == "__main__":
    main()
