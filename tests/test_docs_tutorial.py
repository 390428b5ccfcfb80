"""docs/tutorial.md runs as written: every ```bash block, in order, in one bash process.

One process per test, so shell variables set in one block (``SMOLLM2``, ``MINILM``) reach
the later ones; a fresh temporary folder as the working directory, so the tutorial's
relative output folders land there; the venv's bin first on PATH, so ``lowbit`` and
``python`` are this environment's. ```text blocks are output excerpts and are not run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIAL = ROOT / "docs" / "tutorial.md"
# Printed before each block, so the output shows which block a failure came from.
MARKER = "### tutorial block "
BASH_BLOCK = re.compile(r"^```bash\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def bash_blocks() -> list[str]:
    return BASH_BLOCK.findall(TUTORIAL.read_text(encoding="utf-8"))


def tutorial_script(blocks: list[str]) -> str:
    lines = ["set -euo pipefail"]
    for i, block in enumerate(blocks):
        lines += [f"echo '{MARKER}{i}'", block]
    return "\n".join(lines) + "\n"


def test_tutorial_has_bash_blocks_that_parse() -> None:
    blocks = bash_blocks()
    assert len(blocks) >= 10, "docs/tutorial.md should have a bash block at each step"
    out = subprocess.run(
        ["bash", "-n"], input=tutorial_script(blocks), capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr


@pytest.mark.slow
@pytest.mark.longest
def test_tutorial_commands_run_as_written(tmp_path: Path) -> None:
    blocks = bash_blocks()
    bin_dir = Path(sys.executable).parent  # the venv's bin (not resolved: a symlink in it)
    if not (bin_dir / "lowbit").exists():
        pytest.skip(f"no lowbit console script beside {sys.executable}")
    env = {
        **os.environ,
        "PATH": os.pathsep.join([str(bin_dir), os.environ.get("PATH", "")]),
        # The suite runs two workers on two cores: torch's default of one thread per core
        # oversubscribes them (measured: `lowbit eval` 3.5x slower under that load).
        # Commands with --threads say --threads 1 in the tutorial itself.
        "OMP_NUM_THREADS": "1",
        # Every model in the tutorial is local: a typo must fail at once, not retry the hub.
        "HF_HUB_OFFLINE": "1",
    }
    out = subprocess.run(
        ["bash"],
        input=tutorial_script(blocks),
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=900,
    )
    if out.returncode != 0:
        started = [int(n) for n in re.findall(rf"^{MARKER}(\d+)$", out.stdout, re.MULTILINE)]
        failed = started[-1] if started else 0
        pytest.fail(
            f"docs/tutorial.md bash block {failed + 1} of {len(blocks)} exited with code "
            f"{out.returncode}:\n{blocks[failed]}\n--- output tail ---\n{out.stdout[-4000:]}"
        )
