"""A conv stack in front of the plastic layers, frozen during the lifetime (as in FLP's Omniglot model).

Its weights are genome segments ``features.conv{i}.weight`` / ``.bias``: fixed from the run seed (a random
conv stack), or meta-learned by the gradient meta-training (``finetune.train=['features.*']``).
Images ``[R, size*size]`` -> features ``[R, channels[-1] * 3 * 3]`` (3x3 stride-2 convs with relu, then
adaptive average pooling to 3x3).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

POOL = 3


def feature_size(channels: tuple[int, ...]) -> int:
    return channels[-1] * POOL * POOL


def conv_shapes(channels: tuple[int, ...]) -> list[tuple[int, int]]:
    """``[(c_out, c_in)]`` of each conv layer (single-channel images in)."""
    return list(zip(channels, (1, *channels[:-1])))


def conv_features(weights: list[Tensor], biases: list[Tensor], images: Tensor, size: int) -> Tensor:
    """``images [R, size*size] -> [R, F]`` with conv weights ``[c_out, c_in, 3, 3]`` and biases ``[c_out]``."""
    h = images.reshape(-1, 1, size, size)
    for w, b in zip(weights, biases):
        h = torch.relu(F.conv2d(h, w, b, stride=2, padding=1))
    return F.adaptive_avg_pool2d(h, POOL).flatten(1)


def _is_shared(t: Tensor) -> bool:
    """All P rows are the same tensor (a fixed segment expanded with stride 0)."""
    return t.shape[0] == 1 or t.stride(0) == 0


def extract(params: dict[str, Tensor], images: Tensor, size: int, channels: tuple[int, ...],
            per_row: bool = False) -> Tensor:
    """Features of ``images``.

    ``per_row=False``: ``params`` hold ``[P, ...]`` conv tensors and ``images [K, ..., pixels]``; returns
    ``[K, ..., F]`` when every genome has the same conv weights (computed once), else ``[P*K, ..., F]``.
    ``per_row=True``: ``images [R, ..., pixels]`` pair with conv tensors ``[R, ...]`` row by row.
    """
    n = len(channels)
    ws = [params[f"features.conv{i}.weight"] for i in range(1, n + 1)]
    bs = [params[f"features.conv{i}.bias"] for i in range(1, n + 1)]
    lead, pixels = images.shape[:-1], images.shape[-1]
    if not per_row and all(_is_shared(t) for t in ws + bs):
        out = conv_features([w[0] for w in ws], [b[0] for b in bs], images.reshape(-1, pixels), size)
        return out.reshape(*lead, -1)
    if not per_row:  # one conv stack per genome: [P, K, ...] -> [P*K, ...]
        p, k = ws[0].shape[0], images.shape[0]
        images = images.unsqueeze(0).expand(p, *images.shape).reshape(p, -1, pixels)
        out = torch.func.vmap(lambda w, b, x: conv_features(list(w), list(b), x, size))(tuple(ws), tuple(bs), images)
        return out.reshape(p * k, *lead[1:], -1)
    rows = images.shape[0]
    out = torch.func.vmap(lambda w, b, x: conv_features(list(w), list(b), x, size))(
        tuple(ws), tuple(bs), images.reshape(rows, -1, pixels))
    return out.reshape(*lead, -1)
