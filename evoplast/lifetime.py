"""One lifetime loop for every learner: stream of mini-batches -> query losses (docs/model.md).

``B = P*K``: P genomes (or parameter sets) each live the same K episodes; lifetime ``b = p*K + k``.
The caller chooses the grad mode: under ``torch.no_grad`` for evolution, under autograd for BPTT.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

from .learners import Learner, NetState, state_predict
from .network import loss_per_row
from .tasks import Episodes


@dataclass(frozen=True)
class LifetimeOutput:
    """Results of B lifetimes.

    query_loss: [B, n] query loss per task (MSE or cross-entropy) after the lifetime
    query_acc:  [B, n] classification accuracy per task (None for regression)
    curve:      [B, C, n] query loss per task at each curve point (None unless asked): row c is the
                forgetting matrix's row "after task c"
    final:      the final network state
    curve_acc:  [B, C, n] accuracy per task at each curve point (classification, when asked)
    """

    query_loss: Tensor
    query_acc: Optional[Tensor]
    curve: Optional[Tensor]
    final: NetState
    curve_acc: Optional[Tensor] = None


def expand_params(params: dict[str, Tensor], num_episodes: int) -> dict[str, Tensor]:
    """``{name: [P, *shape]} -> {name: [P*K, *shape]}``: each genome repeated for its K episodes."""
    return {k: v.repeat_interleave(num_episodes, dim=0) for k, v in params.items()}


def tile(t: Tensor, num_genomes: int) -> Tensor:
    """Episode data ``[K, ...]`` -> ``[P*K, ...]`` (row ``p*K + k`` holds episode k). With one episode
    (K = 1) this is a broadcast view, no copy: read it, never write into it."""
    return t.unsqueeze(0).expand(num_genomes, *t.shape).reshape(num_genomes * t.shape[0], *t.shape[1:])


def model_inputs(learner: Learner, params: dict[str, Tensor], x: Tensor, num_genomes: int) -> tuple[Tensor, bool]:
    """What the first layer reads for episode data ``x [K, ..., n_in]``: the data itself, or the features of
    the frozen conv stack. Returns ``(inputs, tiled)``: ``[K, ..., F]`` still to be tiled over genomes, or
    ``[P*K, ..., F]`` when the genomes' conv stacks differ (fine-tuning them)."""
    spec = learner.spec
    if spec.features != "conv":
        return x, False
    from .features import extract

    convs = {n: v for n, v in params.items() if n.startswith("features.")}
    shared = all(torch.equal(v[:1].expand_as(v), v) for v in convs.values())
    if shared:
        return extract({n: v[:1] for n, v in convs.items()}, x, spec.image_size, spec.conv_channels), False
    return extract(convs, tile(x, num_genomes), spec.image_size, spec.conv_channels, per_row=True), True


def query(learner: Learner, state: NetState, query_x: Tensor, query_y: Tensor,
          num_genomes: int, params: Optional[dict[str, Tensor]] = None) -> tuple[Tensor, Optional[Tensor]]:
    """Query loss (and accuracy) per task ``[B, n]`` of ``state`` on ``query_x [K, n, q, n_in]``
    (``params`` are needed when the model has a conv stack)."""
    k, n, q, n_in = query_x.shape
    x, tiled = model_inputs(learner, params or {}, query_x.reshape(k, n * q, n_in), num_genomes)
    x = x if tiled else tile(x, num_genomes)                                # [B, n*q, F]
    y = tile(query_y.reshape(k, n * q, *query_y.shape[3:]), num_genomes)   # [B, n*q(, n_out)]
    y_hat = state_predict(state, x)                                          # [B, n*q, n_out]
    loss = loss_per_row(learner.spec, y_hat, y).reshape(-1, n, q).mean(-1)   # [B, n]
    acc = None
    if learner.spec.kind == "classification":
        acc = (y_hat.argmax(-1) == y).to(y_hat.dtype).reshape(-1, n, q).mean(-1)
    return loss, acc


def run_lifetime(learner: Learner, params: dict[str, Tensor], episodes: Episodes, num_genomes: int, *,
                 learn: bool = True, curve: bool = False, truncate_every: int = 0,
                 on_truncate: Optional[Callable[[int, NetState], NetState]] = None,
                 checkpoint_steps: bool = False) -> LifetimeOutput:
    """Live the K episodes with each of the P parameter sets.

    Args:
        learner: the per-step update (FLP rule or a baseline).
        params: ``{name: [P*K, *shape]}`` (see :func:`expand_params`).
        episodes: K episodes (stream ``[K, T, m, n_in]``, queries ``[K, n, q, n_in]``).
        num_genomes: P.
        learn: False = plasticity off: the weights never change, so the stream is skipped and the
            query sees the initial weights (identical to running the stream with eta = 0).
        curve: also measure the query loss per task after each block of the stream.
        truncate_every / on_truncate: truncated BPTT. After every ``truncate_every`` steps (not after the
            last one) the state goes through ``on_truncate(t, state)``, which typically backpropagates a
            loss and returns the state detached from the graph.
        checkpoint_steps: activation checkpointing under autograd: the stream runs in segments of
            ceil(sqrt(T)) steps whose activations are recomputed in the backward pass; only the state at
            segment starts is stored (memory ~ sqrt(T) states instead of T steps' activations; one more
            forward pass of compute).
    """
    state = learner.init_state(params)
    curve_points: list[Tensor] = []
    if learn:
        T = episodes.num_steps
        curve_stops = set(episodes.curve_steps) if curve else set()
        cuts = {t for t in range(T - 1) if truncate_every and on_truncate is not None and (t + 1) % truncate_every == 0}
        stops = sorted(curve_stops | cuts | {T - 1})
        chunk = math.ceil(math.sqrt(T)) if checkpoint_steps and torch.is_grad_enabled() else T
        stream, tiled = model_inputs(learner, params, episodes.stream_x, num_genomes)

        def live(state: NetState, t0: int, t1: int) -> NetState:
            for t in range(t0, t1):
                x = stream[:, t] if tiled else tile(stream[:, t], num_genomes)  # [B, m, n_in]
                y = tile(episodes.stream_y[:, t], num_genomes)              # [B, m, n_out] or [B, m]
                state = learner.step(params, state, x, y)
            return state

        t = 0
        for stop in stops:                                                  # segments end where something happens
            while t <= stop:
                end = min(stop + 1, t + chunk)
                state = _checkpointed(live, state, t, end) if chunk < T else live(state, t, end)
                t = end
            if stop in cuts:
                state = on_truncate(stop, state)
            if stop in curve_stops:
                curve_points.append(query(learner, state, episodes.query_x, episodes.query_y, num_genomes, params))
    loss, acc = query(learner, state, episodes.query_x, episodes.query_y, num_genomes, params)
    curve_t = curve_acc = None
    if curve:
        c = len(episodes.curve_steps)
        curve_t = torch.stack([p[0] for p in curve_points], 1) if learn else loss.unsqueeze(1).expand(-1, c, -1)
        if acc is not None:
            curve_acc = torch.stack([p[1] for p in curve_points], 1) if learn else acc.unsqueeze(1).expand(-1, c, -1)
    return LifetimeOutput(loss, acc, curve_t, state, curve_acc)


def _checkpointed(live: Callable, state: NetState, t0: int, t1: int) -> NetState:
    """``live(state, t0, t1)`` under ``torch.utils.checkpoint``: only the state at the segment's start is
    kept; the segment's activations are recomputed in the backward pass (non-reentrant, so gradients
    also reach the parameters the steps read)."""
    from torch.utils.checkpoint import checkpoint

    L, C = len(state.weights), len(state.counts)

    def flat(*tensors):
        out = live(NetState(tensors[:L], tensors[L:2 * L], tensors[2 * L:]), t0, t1)
        return (*out.weights, *out.biases, *out.counts)

    out = checkpoint(flat, *state.weights, *state.biases, *state.counts, use_reentrant=False)
    return NetState(tuple(out[:L]), tuple(out[L:2 * L]), tuple(out[2 * L:2 * L + C]))
