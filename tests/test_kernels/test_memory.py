"""retain_freed_memory: glibc serves activation-sized blocks from its heap (kept and reused)
instead of fresh mmaps that are faulted in page by page on every forward pass."""

from __future__ import annotations

import subprocess
import sys

import lowbit

SCRIPT = """
import sys, torch
import lowbit
if sys.argv[1] == "retain":
    assert lowbit.retain_freed_memory()
block = torch.empty(4 * 1024 * 1024)  # 16 MB, the size of a large activation
address = block.data_ptr()
for line in open("/proc/self/maps"):
    if line.rstrip().endswith("[heap]"):
        start, end = (int(v, 16) for v in line.split()[0].split("-"))
        if start <= address < end:
            print("heap")
            break
else:
    print("mmap")
"""


def where_a_16mb_block_lives(mode: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True
    )
    return out.stdout.strip().splitlines()[-1]


def test_retained_blocks_come_from_the_heap() -> None:
    assert where_a_16mb_block_lives("default") == "mmap"
    assert where_a_16mb_block_lives("retain") == "heap"


def test_is_exported_at_the_top() -> None:
    assert lowbit.retain_freed_memory is lowbit.kernels.retain_freed_memory
