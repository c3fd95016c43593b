"""Baselines that need no lifetime loop: pure tensor functions over episodes.

* :func:`prototype_accuracy` — nearest-class-mean (prototype) classifier on the features the output
  layer reads at the genome's initial weights: what a one-hot Hebbian output layer computes at best.
* :class:`InputOnlyRidge` — the best input-only predictor: ridge regression on fixed random Fourier
  features of the input, fitted on many training episodes' stream points. Its held-out loss is what a
  genome can get without learning anything in its lifetime (it knows the family, not the episode).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..network import ModelSpec, forward, loss_per_row
from ..tasks import Episodes


def output_layer_inputs(weights: tuple[Tensor, ...], biases: tuple[Tensor, ...], x: Tensor) -> Tensor:
    """``[B, N, F]``: the activity the output layer reads (the last hidden layer's, or ``x`` with no
    hidden layer) for inputs ``x [B, N, n_in]``."""
    acts, _ = forward(weights, biases, x)
    return acts[-1]


def prototype_accuracy(stream_h: Tensor, stream_labels: Tensor, query_h: Tensor, query_labels: Tensor,
                       n_classes: int) -> Tensor:
    """Nearest-class-mean accuracy per task ``[K, n]``.

    Args:
        stream_h: ``[K, N, F]`` features of the stream's N images; stream_labels: ``[K, N]`` long.
        query_h: ``[K, n, q, F]`` features of the query; query_labels: ``[K, n, q]`` long.
        n_classes: output units (labels are in ``[0, n_classes)``); a class absent from a stream is never
            predicted.
    """
    onehot = torch.nn.functional.one_hot(stream_labels, n_classes).to(stream_h.dtype)    # [K, N, C]
    counts = onehot.sum(1)                                                              # [K, C]
    means = torch.bmm(onehot.transpose(1, 2), stream_h) / counts.clamp(min=1).unsqueeze(-1)  # [K, C, F]
    k, n, q, f = query_h.shape
    flat = query_h.reshape(k, n * q, f)
    dist = (means.square().sum(-1).unsqueeze(1) - 2 * torch.bmm(flat, means.transpose(1, 2)))  # [K, nq, C]
    dist = dist.masked_fill(counts.unsqueeze(1) == 0, math.inf)
    pred = dist.argmin(-1).reshape(k, n, q)
    return (pred == query_labels).to(stream_h.dtype).mean(-1)


@dataclass
class InputOnlyRidge:
    """Ridge regression on random Fourier features ``sqrt(2/D) cos(((x - mu) / sd) W / l + b)`` of the input.

    ``W [n_in, D]`` standard normal and ``b [D]`` uniform in [0, 2 pi) are drawn from ``generator``; the
    inputs are standardised with the training points' mean and std. Targets are ``y [.., n_out]`` (regression)
    or one-hot labels (classification: the prediction is the argmax).
    """

    w: Tensor            # [n_in, D]
    b: Tensor            # [D]
    mu: Tensor           # [n_in]
    sd: Tensor           # [n_in]
    coef: Tensor         # [D + 1, n_out] (last row: intercept)
    lengthscale: float

    def features(self, x: Tensor) -> Tensor:
        """``[..., n_in] -> [..., D + 1]`` (a constant feature last)."""
        z = ((x - self.mu) / self.sd) @ self.w / self.lengthscale + self.b
        phi = math.sqrt(2.0 / self.w.shape[1]) * torch.cos(z)
        return torch.cat([phi, torch.ones_like(phi[..., :1])], -1)

    def predict(self, x: Tensor) -> Tensor:
        """``[..., n_in] -> [..., n_out]``."""
        return self.features(x) @ self.coef

    @classmethod
    def fit(cls, chunks: list[tuple[Tensor, Tensor]], validation: tuple[Tensor, Tensor], n_out: int,
            generator: torch.Generator, num_features: int = 256, lengthscales: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0),
            ridge: float = 1e-3, classification: bool = False) -> "InputOnlyRidge":
        """Fit on training points ``chunks = [(x [N, n_in], y [N, n_out] or labels [N])]`` (accumulated chunk by
        chunk), choosing the lengthscale with the least loss on ``validation`` points (MSE, or error rate)."""
        xs = torch.cat([c[0] for c in chunks])
        mu, sd = xs.mean(0), xs.std(0).clamp(min=1e-6)
        n_in = xs.shape[1]
        w = torch.randn(n_in, num_features, generator=generator, dtype=torch.float64)
        b = torch.rand(num_features, generator=generator, dtype=torch.float64) * 2 * math.pi
        mu, sd = mu.double(), sd.double()

        def target(y: Tensor) -> Tensor:
            return torch.nn.functional.one_hot(y, n_out).double() if classification else y.double()

        best = None
        for ell in lengthscales:
            model = cls(w, b, mu, sd, torch.zeros(num_features + 1, n_out, dtype=torch.float64), ell)
            gram = torch.zeros(num_features + 1, num_features + 1, dtype=torch.float64)
            rhs = torch.zeros(num_features + 1, n_out, dtype=torch.float64)
            count = 0
            for x, y in chunks:
                phi = model.features(x.double())
                gram += phi.T @ phi
                rhs += phi.T @ target(y)
                count += x.shape[0]
            model.coef = torch.linalg.solve(gram + ridge * count * torch.eye(num_features + 1, dtype=torch.float64), rhs)
            pred = model.predict(validation[0].double())
            if classification:
                loss = float((pred.argmax(-1) != validation[1]).double().mean())
            else:
                loss = float((pred - validation[1].double()).square().mean())
            if best is None or loss < best[0]:
                best = (loss, model)
        return best[1]


def input_only_scores(model: InputOnlyRidge, spec: ModelSpec, episodes: Episodes) -> tuple[Tensor, Tensor | None]:
    """``(loss [K, n], accuracy [K, n] or None)`` of the input-only predictor on the episodes' queries
    (classification: the loss is NaN, the predictor gives no probabilities)."""
    k, n, q, n_in = episodes.query_x.shape
    pred = model.predict(episodes.query_x.double()).to(episodes.query_x.dtype)      # [K, n, q, n_out]
    if spec.kind == "regression":
        loss = loss_per_row(spec, pred.reshape(k, n * q, -1), episodes.query_y.reshape(k, n * q, -1))
        return loss.reshape(k, n, q).mean(-1), None
    acc = (pred.argmax(-1) == episodes.query_y).to(pred.dtype).mean(-1)
    return torch.full_like(acc, math.nan), acc
