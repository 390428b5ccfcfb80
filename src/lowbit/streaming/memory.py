"""Memory budgets: sizes as users write them, the machine's default, and what one block of a
streamed quantization needs."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import re

from torch import nn

from lowbit.errors import InvalidInputError

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_UNITS.update({"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40})
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*$")
# The default budget: this share of the machine's physical memory.
DEFAULT_SHARE = 0.75


def parse_size(text: str) -> int:
    """Bytes of a size such as "2GB", "1.5 GiB", "800MB" or "123456" (SI units are powers
    of 10, the *iB units powers of 2)."""
    match = _SIZE.match(str(text))
    unit = match.group(2).upper() if match else ""
    if match is None or unit not in _UNITS:
        raise InvalidInputError(
            f"cannot read the size {text!r}; write a number with a unit, e.g. 2GB, 1.5GiB or 800MB"
        )
    size = int(float(match.group(1)) * _UNITS[unit])
    if size <= 0:
        raise InvalidInputError(f"the size {text!r} is not positive; give e.g. 2GB")
    return size


def physical_memory() -> int:
    """Bytes of RAM on this machine."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def default_max_memory() -> int:
    """The budget when none is given: DEFAULT_SHARE of physical memory, room left for the
    page cache and the rest of the system."""
    return int(physical_memory() * DEFAULT_SHARE)


def format_size(size: float) -> str:
    """A size in MB or GB for messages."""
    return f"{size / 1e9:.2f} GB" if size >= 1e9 else f"{size / 1e6:.0f} MB"


def block_bytes(block: nn.Module, hessian_inputs: list[int]) -> int:
    """Peak bytes of quantizing one block: its float32 weights twice (the float layer and
    the work of its quantization), and a float64 sum plus a float32 copy of GPTQ's Hessian
    for each gptq layer's input size in ``hessian_inputs``."""
    weights = sum(p.numel() for p in block.parameters()) * 4
    hessians = sum(k * k * (8 + 4) for k in hessian_inputs)
    return 2 * weights + hessians


def float32_bytes(model: nn.Module) -> int:
    """Bytes of ``model``'s parameters in float32 (tied tensors once)."""
    seen = {id(p): p.numel() for p in model.parameters()}
    return sum(seen.values()) * 4


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


def return_freed_memory() -> None:
    """Give the memory of freed tensors back to the system (glibc's malloc_trim). glibc
    raises its mmap threshold after each large free, so later blocks' tensors come from the
    heap and their freed pages stay resident: without this, resident memory grew by about
    one block per block (measured: +8 MB per 6.8 MB block)."""
    libc = _libc()
    trim = getattr(libc, "malloc_trim", None) if libc is not None else None
    if trim is not None:
        trim(0)


def peak_rss_bytes() -> int:
    """This program's peak resident memory: VmHWM where /proc has it (it counts only this
    program: getrusage's ru_maxrss also counts the process it was forked from, the
    benchmark or test that started it), else ru_maxrss."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
