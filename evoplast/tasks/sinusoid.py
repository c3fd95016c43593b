"""Continual sinusoid regression (the OML protocol of Javed & White 2019, used by FLP).

An episode holds ``num_tasks`` sinusoids y = A sin(x + phi). Input row = [one-hot index of the
sinusoid within the episode (num_tasks numbers), x]; output = y. The stream presents
``batches_per_task`` mini-batches of ``batch_size`` points per sinusoid, sinusoid after sinusoid
(``blocked``) or with all points shuffled (``iid``). The query set holds fresh points of every sinusoid.
"""

from __future__ import annotations

import torch

from ..config import TaskConfig
from ..seeding import Purpose, generator
from .episodes import Episodes


class SinusoidTask:
    """Builds sinusoid episodes from derived seeds (see :mod:`evoplast.seeding`)."""

    kind = "regression"

    def __init__(self, cfg: TaskConfig):
        self.cfg = cfg
        self.n_in = cfg.num_tasks + 1
        self.n_out = 1

    def episodes(self, seed: int, purpose: Purpose, index: int, num_episodes: int,
                 device: torch.device | str = "cpu", order: str | None = None) -> Episodes:
        """``num_episodes`` episodes; episode k uses the stream ``(seed, purpose, index, k)``.

        ``index`` is the generation for training episodes (0 for held-out ones). Generated with a CPU
        generator, so every device sees identical numbers, then moved to ``device``.
        """
        parts = [self._episode(generator(seed, purpose, index, k), order or self.cfg.order)
                 for k in range(num_episodes)]
        stacked = [torch.stack(p) for p in zip(*parts)]
        c = self.cfg
        # after each sinusoid's block (blocked) or after each 1/num_tasks of the stream (iid)
        curve_steps = tuple((j + 1) * c.batches_per_task - 1 for j in range(c.num_tasks))
        return Episodes(*stacked, curve_steps=curve_steps, kind="regression").to(device)

    def _episode(self, gen: torch.Generator, order: str):
        c = self.cfg
        n, b, m, q = c.num_tasks, c.batches_per_task, c.batch_size, c.query_size

        def uniform(lo_hi, *shape):
            lo, hi = lo_hi
            return lo + (hi - lo) * torch.rand(*shape, generator=gen)

        amplitude = uniform(c.amplitude, n)           # [n]
        phase = uniform(c.phase, n)                   # [n]
        stream_x = uniform(c.x_range, n, b * m)       # [n, b*m] points of each sinusoid
        query_x = uniform(c.x_range, n, q)            # [n, q]
        task = torch.arange(n).unsqueeze(1).expand(n, b * m)   # [n, b*m]
        if order == "iid":
            perm = torch.randperm(n * b * m, generator=gen)
            stream_x = stream_x.reshape(-1)[perm]
            task = task.reshape(-1)[perm]
        stream_x = stream_x.reshape(n * b, m)         # [T, m], T = n*b, blocked by sinusoid
        task = task.reshape(n * b, m)                 # [T, m]
        stream_y = amplitude[task] * torch.sin(stream_x + phase[task])
        query_y = amplitude[:, None] * torch.sin(query_x + phase[:, None])
        eye = torch.eye(n)
        stream_in = torch.cat([eye[task], stream_x.unsqueeze(-1)], dim=-1)          # [T, m, n+1]
        query_in = torch.cat([eye[:, None, :].expand(n, q, n), query_x.unsqueeze(-1)], dim=-1)  # [n, q, n+1]
        return stream_in, stream_y.unsqueeze(-1), task, query_in, query_y.unsqueeze(-1)
