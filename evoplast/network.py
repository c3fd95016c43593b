"""The FLP network, batched over ``B = P*K`` lifetimes (docs/model.md).

Layers l = 1..L with weights ``W_l [B, out, in]`` and biases ``b_l [B, out]``; input ``x_0 [B, m, n_in]``;
``a_l = x_{l-1} W_l^T + b_l``, ``x_l = relu(a_l)`` for l < L, output ``y_hat = a_L``.
Pure functions over tensors: nothing here keeps state or chooses a grad mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class ModelSpec:
    """The architecture and the fixed choices of the model (not searched)."""

    sizes: tuple[int, ...]                 # (n_in, *hidden, n_out)
    plastic_layers: tuple[int, ...]        # 1-based, sorted
    rule: str
    terms: tuple[str, ...] = ()
    teaching_signal: Literal["error", "target"] = "error"
    feedback_activation: Literal["relu", "linear"] = "relu"
    kind: Literal["regression", "classification"] = "regression"
    features: Literal["none", "conv"] = "none"   # a frozen conv stack turns images into sizes[0] features
    image_size: int = 0
    conv_channels: tuple[int, ...] = ()
    batch_reduction: Literal["sum", "mean"] = "sum"   # a step's update: sum over its m rows, or their mean
    count_normalised: bool = False         # each plastic post-neuron's rate divided by (offset + its count)
    gated: bool = False                    # post activity times sigmoid(G s + h): plasticity gated by a third factor

    @property
    def num_layers(self) -> int:
        return len(self.sizes) - 1

    @property
    def n_out(self) -> int:
        return self.sizes[-1]

    @classmethod
    def from_config(cls, cfg, n_in: int, n_out: int, kind: str = "regression") -> "ModelSpec":
        """``n_in`` is the task's input size (pixels for images); with a conv stack the first layer reads
        its features instead."""
        from .features import feature_size

        conv = kind == "classification" and cfg.network.features == "conv"
        first = feature_size(tuple(cfg.network.conv_channels)) if conv else n_in
        sizes = (first, *cfg.network.hidden, n_out)
        plastic = tuple(sorted(set(cfg.network.plastic_layers))) or tuple(range(1, len(sizes)))
        return cls(sizes, plastic, cfg.rule.name, tuple(cfg.rule.terms), cfg.network.teaching_signal,
                   cfg.network.feedback_activation, kind, "conv" if conv else "none",
                   cfg.task.image_size if conv else 0, tuple(cfg.network.conv_channels) if conv else (),
                   cfg.rule.batch_reduction, cfg.rule.count_normalised, cfg.rule.gated)


def column_major(weight: Tensor, copy: bool = False) -> Tensor:
    """``weight [B, out, in]`` laid out transposed in memory (``weight.transpose(1, 2)`` contiguous), the
    layout of every weight in a lifetime: ``x W^T`` and the Hebbian update ``W^T += X^T P`` then run on
    contiguous operands, 1.4-2.5x faster on CPU at small layers than through a transposed view
    (``scripts/benchmark.py``). Values are unchanged. ``copy``: always return a private copy."""
    t = weight.transpose(1, 2)
    t = t.clone(memory_format=torch.contiguous_format) if copy else t.contiguous()
    return t.transpose(1, 2)


def linear(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``[B, m, in] x [B, out, in] + [B, out] -> [B, m, out]`` (fastest with a :func:`column_major` weight)."""
    return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))


def forward(weights: tuple[Tensor, ...], biases: tuple[Tensor, ...], x: Tensor) -> tuple[list[Tensor], Tensor]:
    """Feed-forward pass.

    Args:
        weights: L tensors ``[B, out_l, in_l]``; biases: L tensors ``[B, out_l]``; x: ``[B, m, n_in]``.
    Returns:
        ``(acts, y_hat)``: acts = [x_0, x_1, ..., x_{L-1}] (the input of each layer, ``[B, m, in_l]``; a relu
        unit is active where its activity is > 0) and the output ``y_hat = a_L`` (``[B, m, n_out]``).
    """
    acts = [x]
    h = x
    for l, (w, b) in enumerate(zip(weights, biases), start=1):
        h = linear(h, w, b)
        if l < len(weights):
            h = torch.relu_(h)          # in place on a fresh tensor: one pass less, fine under autograd
            acts.append(h)
    return acts, h


def predict(weights: tuple[Tensor, ...], biases: tuple[Tensor, ...], x: Tensor) -> Tensor:
    """Output ``[B, m, n_out]`` (regression values or logits) for ``x [B, m, n_in]``."""
    h = x
    for l, (w, b) in enumerate(zip(weights, biases), start=1):
        h = linear(h, w, b)
        if l < len(weights):
            h = torch.relu(h)
    return h


def teaching_signal(spec: ModelSpec, y_hat: Tensor, y: Tensor) -> Tensor:
    """Teaching signal s ``[B, m, n_out]``.

    regression: ``y - y_hat`` (error) or ``y`` (target); ``y`` is ``[B, m, n_out]``.
    classification: ``onehot(y)`` (target) or ``onehot(y) - softmax(y_hat)`` (error); ``y`` is ``[B, m]`` long.
    """
    if spec.kind == "regression":
        return y - y_hat if spec.teaching_signal == "error" else y
    onehot = F.one_hot(y, spec.n_out).to(y_hat.dtype)
    return onehot - torch.softmax(y_hat, dim=-1) if spec.teaching_signal == "error" else onehot


def loss_per_row(spec: ModelSpec, y_hat: Tensor, y: Tensor) -> Tensor:
    """Query loss of each row ``[B, m]``: squared error (mean over outputs), or cross-entropy."""
    if spec.kind == "regression":
        return (y_hat - y).square().mean(dim=-1)
    return F.cross_entropy(y_hat.transpose(1, 2), y, reduction="none")
