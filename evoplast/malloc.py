"""Process-level settings for lifetime evaluation.

A lifetime allocates and frees the same few activation tensors at every step. With glibc's default
malloc, blocks above its (dynamic) mmap threshold are unmapped when freed and the top of the heap is
trimmed, so the next step's tensors page-fault fresh zeroed pages in: ~4,000 page faults per generation
of the default config. :func:`reuse_freed_memory` keeps that memory mapped for reuse instead (one
``mallopt`` per process; ``python scripts/benchmark.py allocator`` measured 3,648 -> 6 page faults and
30.3 -> 25.8 ms per default generation on one thread). The cost: the process's resident memory stays
near its peak.
"""

from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20     # glibc's largest allowed value on 64-bit: blocks up to 32 MB come from the heap
TRIM_THRESHOLD = 256 * 2**20    # keep up to 256 MB free at the heap's top instead of returning it to the OS

_applied: bool | None = None


def reuse_freed_memory() -> bool:
    """Ask glibc malloc to keep freed blocks for reuse (idempotent). Returns whether it applied: False
    on other platforms and C libraries, where it does nothing."""
    global _applied
    if _applied is None:
        _applied = False
        if sys.platform.startswith("linux"):
            try:
                mallopt = ctypes.CDLL("libc.so.6").mallopt
            except (OSError, AttributeError):          # not glibc (e.g. musl)
                return False
            mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
            _applied = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _applied
