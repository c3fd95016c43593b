"""The data of K episodes, in the layout the batched lifetime reads."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import Tensor


@dataclass(frozen=True)
class Episodes:
    """K episodes: a stream of T mini-batches of m rows, and a query set per task.

    Shapes (K episodes, T steps, m rows, n tasks, q query points per task):
        stream_x:    [K, T, m, n_in]
        stream_y:    [K, T, m, n_out] (regression, float) or [K, T, m] (classification, long)
        stream_task: [K, T, m] long — the task (sinusoid / class) of every stream row
        query_x:     [K, n, q, n_in]
        query_y:     [K, n, q, n_out] or [K, n, q]
        curve_steps: the steps (0-based, after the update) at which the curve is measured: the end of
                     every block of the stream (one block per task in the blocked order)
    """

    stream_x: Tensor
    stream_y: Tensor
    stream_task: Tensor
    query_x: Tensor
    query_y: Tensor
    curve_steps: tuple[int, ...]
    kind: Literal["regression", "classification"] = "regression"

    @property
    def num_episodes(self) -> int:
        return self.stream_task.shape[0]

    @property
    def num_steps(self) -> int:
        return self.stream_x.shape[1]

    @property
    def num_tasks(self) -> int:
        return self.query_x.shape[1]

    @property
    def n_in(self) -> int:
        return self.stream_x.shape[-1]

    def seen_by_step(self) -> Tensor:
        """``[K, T, n]`` bool: task j has appeared in episode k's stream by the end of step t."""
        k, _, _ = self.stream_task.shape
        onehot = torch.zeros(k, self.num_steps, self.num_tasks, dtype=torch.bool, device=self.stream_task.device)
        onehot.scatter_(2, self.stream_task, True)  # [K, T, n]: task present in step t
        return onehot.cumsum(dim=1) > 0

    def seen_mask(self) -> Tensor:
        """``[K, C, n]`` bool: task j has appeared in the stream by curve point c of episode k."""
        return self.seen_by_step()[:, list(self.curve_steps)]

    def to(self, device: torch.device | str) -> "Episodes":
        return replace(self, stream_x=self.stream_x.to(device), stream_y=self.stream_y.to(device),
                       stream_task=self.stream_task.to(device), query_x=self.query_x.to(device),
                       query_y=self.query_y.to(device))

    def rolled(self, shift: int = 1) -> "Episodes":
        """The same episodes with the query sets of episode ``k + shift`` (for the episode-specific gain)."""
        return replace(self, query_x=self.query_x.roll(shift, dims=0), query_y=self.query_y.roll(shift, dims=0))
