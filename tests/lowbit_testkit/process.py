"""Run Python code in a fresh interpreter and measure its peak resident memory."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

# VmHWM counts only the new program: getrusage's ru_maxrss would also count the pages of the
# process it was forked from (a pytest-xdist worker of several hundred MB).
_REPORT_PEAK = """
import atexit

def _report_peak():
    with open("/proc/self/status") as f:
        print(next(line.split()[1] for line in f if line.startswith("VmHWM:")), flush=True)

atexit.register(_report_peak)
"""


@dataclass(frozen=True)
class Measured:
    """What a measured run returned; ``stdout`` without the peak line."""

    returncode: int
    stdout: str
    stderr: str
    peak_mb: float


def run_measured(code: str, *args: str) -> Measured:
    """Run ``code`` with ``args`` (sys.argv[1:]) under this interpreter and import path."""
    if not Path("/proc/self/status").is_file():
        pytest.skip("peak memory is read from /proc (Linux)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-c", _REPORT_PEAK + code, *args]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    *lines, peak_kb = out.stdout.splitlines() or ["nan"]
    return Measured(out.returncode, "\n".join(lines), out.stderr, float(peak_kb) / 1024)
