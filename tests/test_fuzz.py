"""The readers' fuzzing (issue 15) in `make test`: every input the fuzzer ever found
(tests/fuzz_corpus/TARGET/*.bin) and a short fixed sample of each target's mutations end in
success or a one-line LowbitError. `make fuzz` runs the same strategies for minutes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from lowbit_testkit.fuzz import TARGETS, outcome, seed_bytes

CORPUS = Path(__file__).parent / "fuzz_corpus"
CASES = sorted(CORPUS.glob("*/*.bin"))
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def test_the_corpus_has_cases_of_every_kind_found() -> None:
    assert {p.parent.name for p in CASES} >= {"recipe", "save-manifest", "imatrix"}
    assert all(p.parent.name in TARGETS for p in CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_corpus_case(work: Path, case: Path) -> None:
    name = case.parent.name
    seed_bytes(name, work)
    assert outcome(TARGETS[name], work, case.read_bytes()) is None, case.with_suffix(".txt")


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_seed_reads(work: Path, name: str) -> None:
    assert outcome(TARGETS[name], work, seed_bytes(name, work)) is None


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_a_fixed_sample_of_mutations(work: Path, name: str) -> None:
    target = TARGETS[name]
    seed = seed_bytes(name, work)

    @settings(max_examples=60, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(data=target.inputs(seed))
    def read(data: bytes) -> None:
        assert outcome(target, work, data) is None

    read()


def test_make_fuzz_runs_and_reports(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "fuzz.py"), "--minutes", "0.05",
         "--targets", "recipe", "calib-text"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    lines = {line.split()[0]: line for line in run.stdout.splitlines()[1:]}
    assert " 0 failures" in lines["recipe"] and " 0 failures" in lines["calib-text"]
    assert int(lines["recipe"].split()[1]) > 0
