"""Row-keyed Gaussian noise: row ``r`` of a generation's population from ``(key, r)`` alone.

A population sampled by one generator (``torch.randn(P, D, generator=g)``) can only be regenerated
whole: row 300 needs the 299 rows before it. Here each row has its own CPU generator, seeded by a hash
of the generation's key and the row index, so any process samples any rows, in any chunks, and gets
exactly the rows the driver sampled: O(rows·D) work instead of O(P·D).

The rows are drawn on the CPU (then moved to the caller's device): CUDA's generator gives other
numbers for the same seed, and the driver (often a CPU head node) must sample the same bits. A
counter-based hash that runs on either device was tried and was 26x slower than ``torch.randn`` on
this CPU (0.53 s vs 0.02 s for 64 rows of 91,505), so a GPU actor's own rows cost it less on its CPU
(about 0.3 ms a row) than that hash would on the driver.

``SCHEME`` names this scheme in checkpoints; a change to the seeding or the draw is a new scheme.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import torch

SCHEME = "rows-v1"
_M64 = (1 << 64) - 1


def row_seed(key: int, row: int) -> int:
    """A 63-bit seed for row ``row`` of the generation ``key`` (splitmix64 of the pair)."""
    z = (int(key) * 0x9E3779B97F4A7C15 + int(row) + 1) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return (z ^ (z >> 31)) >> 1


def _draw(key: int, rows: range, dim: int, out: torch.Tensor, negate_odd: bool) -> None:
    """Fill ``out [len(rows), dim]``: row ``r`` from its own generator (``negate_odd``: rows are
    antithetic, ``2k``/``2k+1`` = ``+e_k``/``-e_k``, ``e_k`` drawn from ``row_seed(key, k)``)."""
    gen = torch.Generator(device="cpu")
    drawn = None                                 # (direction, row of out) last drawn
    for i, r in enumerate(rows):
        k = r // 2 if negate_odd else r
        if drawn is not None and drawn[0] == k:  # the pair's partner, drawn in this chunk
            torch.neg(out[drawn[1]], out=out[i])
            continue
        gen.manual_seed(row_seed(key, k))
        torch.randn(dim, generator=gen, out=out[i])
        if negate_odd and r % 2 == 1:
            out[i].neg_()
        drawn = (k, i)


def _rows(key: int, start: int, stop: int, dim: int, negate_odd: bool, threads: Optional[int]) -> torch.Tensor:
    n = max(0, stop - start)
    out = torch.empty(n, dim, dtype=torch.float32)
    threads = max(1, min(threads or torch.get_num_threads(), n // 8 or 1))
    if threads == 1:
        _draw(key, range(start, stop), dim, out, negate_odd)
        return out
    # rows are independent: threads draw contiguous groups (torch releases the GIL while it draws);
    # group bounds are even so that a pair is never split between two threads
    cuts = sorted({start, stop, *(min(stop, start + 2 * ((n * t // threads) // 2)) for t in range(1, threads))})
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda ab: _draw(key, range(ab[0], ab[1]), dim, out[ab[0] - start:ab[1] - start], negate_odd),
                      zip(cuts, cuts[1:])))
    return out


def normal_rows(key: int, start: int, stop: int, dim: int, device: torch.device | str = "cpu",
                threads: Optional[int] = None) -> torch.Tensor:
    """``[stop - start, dim]`` float32 standard normals: rows ``start:stop`` of the generation ``key``.
    Row ``r`` is the same whatever ``start``/``stop``, whichever process draws it and with how many
    ``threads`` (default: torch's intra-op threads)."""
    return _rows(key, start, stop, dim, False, threads).to(device)


def symmetric_rows(key: int, start: int, stop: int, dim: int, device: torch.device | str = "cpu",
                   threads: Optional[int] = None) -> torch.Tensor:
    """``[stop - start, dim]``: antithetic noise, rows ``2k`` and ``2k+1`` are ``+e_k`` and ``-e_k``
    (EvoTorch's ``SymmetricSeparableGaussian`` layout), ``e_k`` = row ``k`` of :func:`normal_rows`.
    A chunk that starts or ends inside a pair still gets the pair's own ``e_k``."""
    return _rows(key, start, stop, dim, True, threads).to(device)
