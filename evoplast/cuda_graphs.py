"""A generation's batched lifetime replayed as one captured CUDA graph.

At CPU-default sizes (11-40-40-1, 100 steps of 8) a lifetime step on a GPU is a dozen tiny kernels, each
far shorter than its launch: the GPU waits on Python and the driver. Every generation runs the same
shapes (P genomes x K episodes x T steps), so :class:`GraphedScorer` captures :func:`score_params` once
per shape with ``torch.cuda.graph`` and afterwards only copies the new genomes' decoded parameters and the
new episodes into the captured input tensors and replays the graph: one launch per generation.

Same numbers as the eager path: the graph replays the very kernels that the eager call launches (tested
in ``scripts/gpu_check.py`` and ``tests/test_graphs.py`` on a GPU). Not used for conv features (their
shared-stack test reads a value on the host) or under autograd.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Callable

import torch
from torch import Tensor

from .tasks import Episodes

_EPISODE_TENSORS = ("stream_x", "stream_y", "stream_task", "query_x", "query_y")


@dataclass
class _Capture:
    graph: "torch.cuda.CUDAGraph"
    params: dict[str, Tensor]          # the captured inputs, written before each replay
    episodes: Episodes
    scores: object                     # the captured outputs (a Scores of static tensors)


class GraphedScorer:
    """``score(params, episodes) -> Scores`` with one CUDA graph per input shape.

    Args:
        score: the eager scorer, ``score(params {name: [P, *shape]}, episodes) -> Scores``, pure over its
            inputs (no host reads of device values, no randomness).
        warmup: eager calls on a side stream before the capture (lets cuBLAS pick and allocate workspaces).
    """

    def __init__(self, score: Callable[[dict[str, Tensor], Episodes], object], warmup: int = 2):
        self.score = score
        self.warmup = warmup
        self.captures: dict[tuple, _Capture] = {}

    @staticmethod
    def key(params: dict[str, Tensor], episodes: Episodes) -> tuple:
        return (tuple((n, tuple(v.shape), v.dtype) for n, v in sorted(params.items())),
                tuple((n, tuple(getattr(episodes, n).shape)) for n in _EPISODE_TENSORS),
                episodes.curve_steps, episodes.kind)

    @torch.no_grad()
    def __call__(self, params: dict[str, Tensor], episodes: Episodes):
        key = self.key(params, episodes)
        cap = self.captures.get(key)
        if cap is None:
            cap = self.captures[key] = self._capture(params, episodes)
        for name, value in params.items():
            cap.params[name].copy_(value)
        for name in _EPISODE_TENSORS:
            getattr(cap.episodes, name).copy_(getattr(episodes, name))
        cap.graph.replay()
        out = cap.scores                                  # copies: the next replay overwrites the statics
        return replace(out, **{f.name: getattr(out, f.name).clone() for f in fields(out)
                               if isinstance(getattr(out, f.name), Tensor)})

    def _capture(self, params: dict[str, Tensor], episodes: Episodes) -> _Capture:
        static_params = {n: v.clone() for n, v in params.items()}
        static_episodes = replace(episodes, **{n: getattr(episodes, n).clone() for n in _EPISODE_TENSORS})
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.score(static_params, static_episodes)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            scores = self.score(static_params, static_episodes)
        return _Capture(graph, static_params, static_episodes, scores)
