"""Process-level settings: glibc keeps the memory a lifetime frees at every step, so steps stop page-faulting.

The page-fault counts themselves are a measurement (``python scripts/benchmark.py allocator``: ~3,600 -> ~10
per default generation); the test checks the mechanism, read from glibc's own accounting (``mallinfo2``):
with the setting, a block of 24 MiB comes from the heap rather than a fresh mmap, and freeing it does not
hand the pages back to the kernel.
"""

import ctypes
import sys

import pytest

from evoplast.malloc import reuse_freed_memory

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def _libc():
    libc = ctypes.CDLL("libc.so.6")
    if not hasattr(libc, "mallinfo2"):
        pytest.skip("glibc older than 2.33 (no mallinfo2)")
    libc.mallinfo2.restype = _MallInfo2
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
    libc.free.argtypes = (ctypes.c_void_p,)
    return libc


def test_freed_blocks_stay_in_the_heap_for_reuse():
    assert reuse_freed_memory() is True and reuse_freed_memory() is True      # applied, idempotent
    libc = _libc()
    before = libc.mallinfo2()
    block = libc.malloc(24 * 2**20)
    during = libc.mallinfo2()
    libc.free(block)
    after = libc.mallinfo2()
    assert during.hblkhd == before.hblkhd                  # not an mmap of its own (the default above 128 KiB+)
    assert during.uordblks >= before.uordblks + 24 * 2**20  # served from the heap
    assert after.arena >= during.arena                      # freeing kept the pages (no trim of the top)
