"""`lowbit explain` from the command line, as a user types it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lowbit_testkit.golden import load_golden

GOLDEN = load_golden("affine_worked_examples.json")["cases"]


def run_lowbit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lowbit.cli.main", *args], capture_output=True, text=True
    )


@pytest.mark.parametrize("case", GOLDEN, ids=lambda c: c["name"])
def test_worked_examples_in_the_terminal_and_as_json(case: dict) -> None:
    out = run_lowbit(*case["cli"])
    assert out.returncode == 0, out.stderr
    assert f"s = {case['scale']:.3g}" in out.stdout
    assert f"codes = {case['q']}" in out.stdout
    assert f"dequantized = {[round(v, 2) for v in case['dequantized']]}" in out.stdout
    doc = json.loads(run_lowbit(*case["cli"], "--json").stdout)
    assert doc["q"] == case["q"]
    assert doc["scale"] == pytest.approx(case["scale"], abs=1e-6)
    assert doc["dequantized"] == pytest.approx(case["dequantized"], abs=1e-6)
    assert set(doc) >= {"scale", "q", "dequantized", "error"}
    assert ("offset" in doc) == (not case["symmetric"])


def test_negative_values_after_double_dash() -> None:
    out = run_lowbit("explain", "--bits", "3", "--range", "2", "--json", "--", "-1.1", "-2.4")
    assert json.loads(out.stdout)["q"] == [-2, -3]


def test_bad_bits_gives_a_clear_error_and_exit_code_1() -> None:
    out = run_lowbit("explain", "--bits", "12", "1.0")
    assert out.returncode == 1
    assert "1 to 8 bits" in out.stderr and "Traceback" not in out.stderr
