"""Errors and warnings raised by lowbit.

Every error message names the problem and the fix, so a user can act on it without reading
lowbit's source.
"""

from __future__ import annotations


def one_line(text: str) -> str:
    """``text`` with its unprintable characters (newlines, NUL, terminal escapes) written as
    Python escapes, so a message quoting bytes from a file stays one printable line."""
    if text.isprintable():
        return text
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text
    )


class LowbitError(Exception):
    """Base class of every error lowbit raises on purpose. Its message is always one
    printable line (``one_line``): the CLI prints it as the whole of its error output."""

    def __init__(self, *args: object) -> None:
        if args and isinstance(args[0], str):
            args = (one_line(args[0]), *args[1:])
        super().__init__(*args)


class InvalidInputError(LowbitError, ValueError):
    """An input tensor, value or file is not usable (NaN/Inf, wrong shape, damaged file)."""


class InvalidSpecError(LowbitError, ValueError):
    """A quantization spec is inconsistent (e.g. symmetric with an unsigned type)."""


class UnsupportedFormatError(LowbitError, ValueError):
    """A format, file type or version that lowbit does not know."""


class MissingDependencyError(LowbitError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


class LowbitWarning(UserWarning):
    """Warnings about results that may be worse than the user expects."""


def require(module: str, extra: str):
    """Import an optional dependency, or raise MissingDependencyError naming the extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{module!r} is not installed; install it with: pip install 'lowbit[{extra}]'"
        ) from exc
