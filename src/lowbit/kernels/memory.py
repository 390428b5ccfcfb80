"""Keep freed activation memory in the process for reuse (glibc malloc settings).

A transformer forward pass at batch 32 x 128 tokens allocates and frees tens of MB-sized
activations. glibc returns such blocks to the OS and the next pass faults them back in,
page by page: measured on all-MiniLM-L6-v2, about 40,000 page faults per forward pass,
15-20 % of the int8 model's time and 5-8 % of fp32's (docs/decisions.md, "Per-token W8A8").
jemalloc/tcmalloc through LD_PRELOAD fix the same thing from outside the process.
"""

from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's ceiling on 64-bit systems
_NEVER_TRIM = 2**31 - 1


def retain_freed_memory() -> bool:
    """Make glibc keep freed blocks up to 32 MB for reuse instead of unmapping them.

    Process-wide and not undone: resident memory then stays near its peak. Returns False
    (and changes nothing) where the C library is not glibc.
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(
        mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM)
    )
