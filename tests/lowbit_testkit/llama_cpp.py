"""llama.cpp's tools (llama-quantize, llama-perplexity, llama-embedding) built by
``make llama-tools``: tests that need them fail, naming that command, when they are missing."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_DIR = Path.home() / ".cache" / "lowbit" / "llama.cpp-0c1e570"


def tool(name: str) -> Path:
    """The path of llama.cpp tool ``name``: under $LOWBIT_LLAMA_CPP_DIR, else the default cache.
    Raises AssertionError (the test fails, never skips) naming `make llama-tools`."""
    root = Path(os.environ.get("LOWBIT_LLAMA_CPP_DIR", DEFAULT_DIR))
    for candidate in (root / "build" / "bin" / name, root / "bin" / name, root / name):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = sorted(p for p in root.rglob(name) if p.is_file()) if root.is_dir() else []
    if found:
        return found[0]
    raise AssertionError(
        f"llama.cpp tool {name!r} not found under {root}; build it with `make llama-tools` "
        "(or set LOWBIT_LLAMA_CPP_DIR to a llama.cpp 0c1e570 build)"
    )
