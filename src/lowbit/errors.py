"""Errors and warnings raised by lowbit.

Every error message names the problem and the fix, so a user can act on it without reading
lowbit's source.
"""

from __future__ import annotations


class LowbitError(Exception):
    """Base class of every error lowbit raises on purpose."""


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
