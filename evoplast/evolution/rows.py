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

import torch

SCHEME = "rows-v1"
_M64 = (1 << 64) - 1


def row_seed(key: int, row: int) -> int:
    """A 63-bit seed for row ``row`` of the generation ``key`` (splitmix64 of the pair)."""
    z = (int(key) * 0x9E3779B97F4A7C15 + int(row) + 1) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return (z ^ (z >> 31)) >> 1


def normal_rows(key: int, start: int, stop: int, dim: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``[stop - start, dim]`` float32 standard normals: rows ``start:stop`` of the generation ``key``.
    Row ``r`` is the same whatever ``start``/``stop`` and whichever process draws it."""
    out = torch.empty(max(0, stop - start), dim, dtype=torch.float32)
    gen = torch.Generator(device="cpu")
    for i, r in enumerate(range(start, stop)):
        gen.manual_seed(row_seed(key, r))
        torch.randn(dim, generator=gen, out=out[i])
    return out.to(device)


def symmetric_rows(key: int, start: int, stop: int, dim: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``[stop - start, dim]``: antithetic noise, rows ``2k`` and ``2k+1`` are ``+e_k`` and ``-e_k``
    (EvoTorch's ``SymmetricSeparableGaussian`` layout), ``e_k`` = row ``k`` of :func:`normal_rows`.
    A chunk that starts or ends inside a pair still gets the pair's own ``e_k``."""
    if stop <= start:
        return torch.zeros(0, dim, device=device)
    first, last = start // 2, (stop - 1) // 2
    e = normal_rows(key, first, last + 1, dim)                                       # [directions, dim]
    rows = torch.arange(start, stop)
    out = e[rows // 2 - first]
    odd = rows % 2 == 1
    out[odd] = -out[odd]
    return out.to(device)
