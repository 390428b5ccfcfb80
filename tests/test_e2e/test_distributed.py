"""Calibration spread over processes (issue 15): `torchrun --nproc-per-node 2 -m
lowbit.cli.main quantize ...` splits the calibration windows over two processes (gloo),
combines GPTQ's Hessians (float64 sums), SmoothQuant's channel statistics and AWQ's row
samples, and writes what one process writes, byte for byte (docs/decisions.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lowbit.cli.main import main
from lowbit_testkit.models import tiny_llama_folder

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::lowbit.errors.LowbitWarning")]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tiny_llama_folder(tmp_path_factory.mktemp("dist") / "llama", hidden_size=64,
                             intermediate_size=128)  # fmt: skip


@pytest.mark.parametrize(
    ("recipe", "seq_len"),
    # AWQ: 8 x 544 = 4352 rows, more than the 4096 its row sample keeps, so the two
    # processes' samples must merge into exactly the one-process sample
    [("w4a16-g32-gptq", 32), ("w8a8-smoothquant", 32), ("w4a16-g32-awq", 544)],
)
def test_two_processes_write_what_one_writes(tmp_path: Path, folder: Path, recipe, seq_len):
    args = ["quantize", str(folder), "--recipe", recipe, "--samples", "8", "--seq-len",
            str(seq_len), "--threads", "1"]  # fmt: skip
    before = torch.get_num_threads()
    main([*args, "--out", str(tmp_path / "one")])
    torch.set_num_threads(before)
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "lowbit.cli.main", *args, "--out", str(tmp_path / "two")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    one = load_file(str(tmp_path / "one" / "model.safetensors"))
    two = load_file(str(tmp_path / "two" / "model.safetensors"))
    assert one.keys() == two.keys()
    for key in one:
        assert torch.equal(one[key], two[key]), key


def test_too_few_batches_are_refused_across_processes(monkeypatch) -> None:
    import lowbit
    from lowbit.errors import InvalidInputError
    from lowbit.observers import processes
    from lowbit_testkit.models import tiny_llama

    monkeypatch.setattr(processes, "world_size", lambda: 2)
    monkeypatch.setattr(processes, "rank", lambda: 1)
    batches = [torch.randint(0, 96, (1, 16))]
    with pytest.raises(InvalidInputError, match="at least one per process"):
        lowbit.quantize(tiny_llama(), "w4a16-g32-gptq", calib_data=batches)
