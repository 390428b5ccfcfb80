"""Find llama.cpp's tools built by ``make llama-tools`` (tools/llama_cpp.sh)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

COMMIT = "0c1e570"


def llama_cpp_dir() -> Path:
    """Where ``make llama-tools`` installs: $LOWBIT_LLAMA_CPP_DIR, else the default cache."""
    env = os.environ.get("LOWBIT_LLAMA_CPP_DIR")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "lowbit" / f"llama.cpp-{COMMIT}"


def tool(name: str) -> Path:
    """The path of a built llama.cpp tool (e.g. "llama-quantize"); fails the test, naming
    ``make llama-tools``, when it is not built."""
    path = llama_cpp_dir() / "bin" / name
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(
            f"llama.cpp tool {name} not found at {path}: run `make llama-tools` (builds "
            f"llama.cpp {COMMIT} once, ~5 minutes) or set LOWBIT_LLAMA_CPP_DIR to a folder "
            f"that has bin/{name}",
            pytrace=False,
        )
    return path


def library(name: str = "libggml-base.so") -> Path:
    """The path of a built llama.cpp shared library; fails like ``tool`` when missing."""
    path = llama_cpp_dir() / "lib" / name
    if not path.is_file():
        pytest.fail(
            f"llama.cpp library {name} not found at {path}: run `make llama-tools` or set "
            "LOWBIT_LLAMA_CPP_DIR",
            pytrace=False,
        )
    return path
