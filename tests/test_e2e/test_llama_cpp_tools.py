"""llama.cpp's tools built by `make llama-tools` run: the reference runtime for GGUF files."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from lowbit.eval.bundled import smollm2_gguf_path
from lowbit_testkit.llama_cpp import library, tool

TOOLS = [
    "llama-quantize",
    "llama-imatrix",
    "llama-perplexity",
    "llama-completion",
    "llama-embedding",
]


@pytest.mark.parametrize("name", TOOLS)
def test_tool_is_built(name: str) -> None:
    assert tool(name).is_file()


def test_shared_libraries_are_built() -> None:
    assert library("libggml-base.so").is_file()


def test_quantize_help() -> None:
    run = subprocess.run([tool("llama-quantize"), "--help"], capture_output=True, text=True)
    assert "usage:" in run.stdout + run.stderr


def test_perplexity_on_smollm2(tmp_path: Path) -> None:
    text = tmp_path / "text.txt"
    docs = Path(__file__).parents[2] / "docs"
    text.write_text("\n".join(p.read_text() for p in sorted(docs.glob("*.md"))))
    run = subprocess.run(
        [tool("llama-perplexity"), "-m", smollm2_gguf_path(), "-f", text, "-c", "128",
         "--chunks", "2", "-t", "2"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    ppl = float(re.search(r"Final estimate: PPL = ([0-9.]+)", run.stdout + run.stderr)[1])
    assert 1 < ppl < 1000
