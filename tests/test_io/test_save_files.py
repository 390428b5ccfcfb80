"""What saving leaves on disk: modes that follow the umask, no stale temporary folders after a
killed run, and a replacement that a crash between its two renames cannot lose."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lowbit import atomic
from lowbit.atomic import atomic_write_text
from lowbit.io import load, load_model, save
from lowbit.recipes import quantize
from lowbit_testkit.models import tiny_llama


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask():
    previous = os.umask(0o022)
    yield os.umask
    os.umask(previous)


@pytest.mark.parametrize(
    ("mask", "folder_mode", "file_mode"), [(0o022, 0o755, 0o644), (0o027, 0o750, 0o640)]
)
def test_outputs_follow_the_umask(tmp_path, umask, mask, folder_mode, file_mode) -> None:
    umask(mask)
    folder = save(quantize(tiny_llama(num_hidden_layers=1), "w8a16"), tmp_path / "m")
    assert _mode(folder) == folder_mode
    assert {p.name: _mode(p) for p in folder.iterdir()} == {
        "manifest.json": file_mode,
        "model.safetensors": file_mode,
    }
    assert _mode(atomic_write_text(tmp_path / "report.md", "x")) == file_mode


_CRASH_IN_THE_SECOND_RENAME = """
import os, sys
import lowbit
from lowbit import atomic
from lowbit_testkit.models import tiny_llama

atomic._exchange = lambda a, b: False  # the two-rename path of systems without renameat2
real_replace, calls = os.replace, []

def replace(src, dst):
    calls.append(src)
    if len(calls) == 2:  # the old folder is aside, the new one not yet in place
        os._exit(9)  # as abrupt as kill -9: no cleanup runs
    real_replace(src, dst)

atomic.os.replace = replace
lowbit.save(lowbit.quantize(tiny_llama(), "w4a16-g32"), sys.argv[1])
"""


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True)


def test_a_crash_between_the_two_renames_keeps_the_previous_output(tmp_path) -> None:
    previous = quantize(tiny_llama(), "w8a16")
    folder = save(previous, tmp_path / "m")
    assert _run(_CRASH_IN_THE_SECOND_RENAME, str(folder)).returncode == 9
    assert not folder.exists()  # the crash came between the renames
    ids = torch.randint(0, 96, (1, 8))
    reloaded = load_model(folder).model  # `lowbit eval` restores the previous output
    with torch.no_grad():
        assert torch.equal(previous(ids).logits, reloaded(ids).logits)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "m"]
    assert len(leftovers) == 1 and ".m.lowbit-tmp-" in leftovers[0]  # the killed run's output
    save(previous, folder)  # the next save removes it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_load_restores_from_the_backup(tmp_path) -> None:
    model = quantize(tiny_llama(num_hidden_layers=1), "w8a16")
    folder = save(model, tmp_path / "m")
    os.replace(folder, tmp_path / ".m.lowbit-backup")  # the state after the first rename
    ids = torch.randint(0, 96, (1, 8))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, load(folder)(ids).logits)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


@pytest.mark.parametrize("exchange", [True, False])
def test_replacing_leaves_nothing_else(tmp_path, monkeypatch, exchange: bool) -> None:
    swaps = []
    real_exchange = atomic._exchange

    def spy(a: Path, b: Path) -> bool:
        swaps.append(exchange and real_exchange(a, b))
        return swaps[-1]

    monkeypatch.setattr(atomic, "_exchange", spy)
    first, second = (quantize(tiny_llama(num_hidden_layers=1), p) for p in ("w8a16", "w4a16-g32"))
    save(first, tmp_path / "m")
    folder = save(second, tmp_path / "m")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    assert load(folder).lowbit_recipe["name"] == "w4a16-g32"
    if exchange and sys.platform.startswith("linux"):
        assert swaps == [True]  # renameat2(RENAME_EXCHANGE): one step, never a missing folder


def test_stale_temporary_folders_of_dead_processes_are_removed(tmp_path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = atomic._HOST
    stale = tmp_path / f".m.lowbit-tmp-{host}-{dead.pid}-0a1b2c3d"
    stale_file = tmp_path / f".report.md.lowbit-tmp-{host}-{dead.pid}-0a1b2c3d"
    alive = tmp_path / f".m.lowbit-tmp-{host}-{os.getppid()}-0a1b2c3d"  # a running process
    other_host = tmp_path / f".m.lowbit-tmp-elsewhere-{dead.pid}-0a1b2c3d"
    for folder in (stale, alive, other_host):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(bytes(1 << 20))
    stale_file.write_text("half")
    save(quantize(tiny_llama(num_hidden_layers=1), "w8a16"), tmp_path / "m")
    atomic_write_text(tmp_path / "report.md", "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["m", "report.md", alive.name, other_host.name]
    )
