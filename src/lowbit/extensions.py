"""Loading lowbit's optional C extensions (built by setup.py when a compiler is present).

Each extension is plain C called through ctypes; its CPython module init exists only so
setuptools builds it. A missing or unloadable extension is None, and its caller keeps a torch
path with the same numbers: a missing compiler costs speed, never results.
"""

from __future__ import annotations

import ctypes
import importlib.util


def load_extension(module: str) -> ctypes.CDLL | None:
    """The shared library of extension ``module`` ("lowbit.kernels._rowquant"), or None when
    it is not built or cannot be loaded."""
    try:
        spec = importlib.util.find_spec(module)
    except ModuleNotFoundError:
        return None
    if spec is None or spec.origin is None:
        return None
    try:
        return ctypes.CDLL(spec.origin)
    except OSError:
        return None
