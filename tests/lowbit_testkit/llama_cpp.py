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


def source_dir() -> Path:
    """llama.cpp's source (vendor/llama.cpp of the sdist): $LOWBIT_LLAMA_CPP_SRC, the default
    extraction folder of ``make llama-tools``, else the folder the tools were built from (their
    CMakeCache); fails the test, naming the variable, when none has convert_hf_to_gguf.py."""
    candidates = []
    if os.environ.get("LOWBIT_LLAMA_CPP_SRC"):
        candidates.append(Path(os.environ["LOWBIT_LLAMA_CPP_SRC"]) / "vendor" / "llama.cpp")
    candidates.append(llama_cpp_dir() / "src" / "vendor" / "llama.cpp")
    cache = llama_cpp_dir() / "build" / "CMakeCache.txt"
    if cache.is_file():
        for line in cache.read_text(errors="replace").splitlines():
            if line.startswith("CMAKE_HOME_DIRECTORY:INTERNAL="):
                candidates.append(Path(line.split("=", 1)[1]))
    for path in candidates:
        if (path / "convert_hf_to_gguf.py").is_file():
            return path
    pytest.fail(
        "llama.cpp's source (convert_hf_to_gguf.py) not found: run `make llama-tools` or set "
        "LOWBIT_LLAMA_CPP_SRC to the extracted llama-cpp-python 0.3.36 sdist",
        pytrace=False,
    )
