"""`make fuzz`: fuzz every lowbit reader for a bounded time (issue 15).

    python tools/fuzz.py [--minutes 10] [--targets gguf recipe ...] [--jobs 2]

The time is shared equally by the targets (tests/lowbit_testkit/fuzz.py), ``--jobs`` run at
once. Each target runs in a worker process that draws inputs from the target's hypothesis
strategy and reads them; a failure is any input that ends in something other than success
or a one-line LowbitError, takes more than 10 s, crashes the worker, or raises its peak RSS
beyond the input's size + 300 MB over what the seed needed. Each failing input is written to
tests/fuzz_corpus/TARGET/ (which `make test` replays) and reported. Exit status 1 when
anything failed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import select
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

CORPUS = ROOT / "tests" / "fuzz_corpus"
INPUT_TIMEOUT_S = 10
MEMORY_HEADROOM = 300 * 2**20
BATCH = 200  # inputs per hypothesis run inside a worker


class InputTimeoutError(BaseException):  # not caught by outcome()
    pass


def save_case(target: str, data: bytes, problem: str) -> None:
    """Write a failing input into the corpus (named by its hash) with its problem beside it,
    unless the corpus holds one with the same kind of problem (``signature``)."""
    from lowbit_testkit.fuzz import signature

    folder = CORPUS / target
    folder.mkdir(parents=True, exist_ok=True)
    known = {signature(p.read_text()) for p in folder.glob("*.txt")}
    if signature(problem) in known:
        return
    path = folder / f"{hashlib.sha256(data).hexdigest()[:16]}.bin"
    path.write_bytes(data)
    path.with_suffix(".txt").write_text(problem + "\n")


def worker(name: str, seconds: float, work: Path) -> None:
    """Fuzz one target for ``seconds``; print a JSON line per batch (count, failures)."""
    from hypothesis import HealthCheck, given, settings

    from lowbit_testkit.fuzz import TARGETS, outcome, seed_bytes

    target = TARGETS[name]
    seed = seed_bytes(name, work)
    assert outcome(target, work, seed) is None, f"{name}: the seed itself fails"
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    current = work / "current.bin"
    state = {"count": 0, "failures": 0}

    def on_alarm(signum, frame):
        raise InputTimeoutError

    signal.signal(signal.SIGALRM, on_alarm)

    @settings(max_examples=BATCH, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(data=target.inputs(seed))
    def run(data: bytes) -> None:
        current.write_bytes(data)  # the parent saves it if this process dies or hangs
        signal.alarm(INPUT_TIMEOUT_S)
        try:
            problem = outcome(target, work, data)
        except InputTimeoutError:
            problem = f"took more than {INPUT_TIMEOUT_S} s"
        finally:
            signal.alarm(0)
        state["count"] += 1
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        if problem is None and peak > baseline + len(data) + MEMORY_HEADROOM:
            problem = (
                f"peak RSS {peak / 2**20:.0f} MB, over {baseline / 2**20:.0f} MB + input + 300 MB"
            )
        if problem is not None:
            state["failures"] += 1
            save_case(name, data, problem)
            print(json.dumps({"failure": problem}), flush=True)
            if problem.startswith("peak RSS"):
                sys.exit(3)  # ru_maxrss never falls: a fresh worker goes on

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        run()
        print(json.dumps(state), flush=True)


def supervise(name: str, seconds: float) -> dict:
    """Run workers for target ``name`` until ``seconds`` have passed; a worker that dies or
    goes silent (a hang below Python) has its current input saved, and a new one goes on."""
    end = time.monotonic() + seconds
    total = {"target": name, "inputs": 0, "failures": [], "workers": 0}
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{name}-") as tmp:
        work = Path(tmp)
        while (left := end - time.monotonic()) > 1:
            total["workers"] += 1
            cmd = [sys.executable, __file__, "--worker", name, "--seconds", str(left),
                   "--work", str(work)]  # fmt: skip
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            done = 0
            while True:
                ready, _, _ = select.select([proc.stdout], [], [], 3 * INPUT_TIMEOUT_S)
                if not ready:  # silent: hung where the alarm cannot reach
                    proc.kill()
                    problem = f"hung (no progress for {3 * INPUT_TIMEOUT_S} s)"
                    break
                line = proc.stdout.readline()
                if not line:
                    problem = None
                    break
                msg = json.loads(line)
                if "failure" in msg:
                    total["failures"].append(msg["failure"])
                else:
                    done = msg["count"]
            code = proc.wait()
            total["inputs"] += done
            if problem is None and code not in (0, 3):
                problem = f"worker died ({code}): {proc.stderr.read()[-300:]}"
            if problem is not None:
                current = work / "current.bin"
                data = current.read_bytes() if current.is_file() else b""
                save_case(name, data, problem)
                total["failures"].append(problem)
            elif code == 0:
                break
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--targets", nargs="*")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.seconds, args.work)
        return 0
    from lowbit_testkit.fuzz import TARGETS

    names = args.targets or list(TARGETS)
    jobs = max(1, min(args.jobs, len(names)))
    seconds = args.minutes * 60 * jobs / len(names)
    print(f"fuzzing {len(names)} readers, {seconds:.0f} s each, {jobs} at a time", flush=True)
    with ThreadPoolExecutor(jobs) as pool:
        results = list(pool.map(lambda n: supervise(n, seconds), names))
    failed = 0
    for r in results:
        failed += len(r["failures"])
        print(f"{r['target']:14} {r['inputs']:8d} inputs  {len(r['failures'])} failures"
              f"  ({r['inputs'] / seconds:.0f}/s)")  # fmt: skip
        for problem in sorted(set(r["failures"]))[:10]:
            print(f"    {problem}")
    if failed:
        print(f"{failed} failing inputs written to {CORPUS}/TARGET/ (replayed by make test)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
