"""PES: persistent evolution strategies (Vicol, Metz & Sohl-Dickstein, ICML 2021) over the batched lifetime.

A lifetime of T steps is unrolled W steps at a time (a truncation). N = 2·pairs particles live it side by
side, one batched lifetime of ``B = N·K`` (K common episodes): particle ``i`` and ``i + pairs`` use
``θ + ε_i`` and ``θ − ε_i`` (antithetic) for the truncation. Each particle keeps its network state
(the plastic weights) *and* the sum ``ξ_i`` of the perturbations it has lived under since its lifetime
began; the estimate of ``∇θ Σ_τ L_τ`` (the sum of the truncations' losses over a lifetime) is

    g = mean_i (L_τ(θ + ε_i) − L_τ(θ − ε_i)) ξ_i / (2 σ²),      ξ_i = Σ_{s ≤ τ} ε_{i,s}

which, unlike truncated ES or truncated BPTT, is unbiased for the whole lifetime (the state a
truncation starts from was produced by the earlier perturbations, which ξ remembers). At the end of a
lifetime the states restart from the initial weights on new episodes and ξ is reset to 0.

The truncation's loss ``L_τ`` is the query loss over the tasks seen so far (the same as truncated
BPTT's window loss; the last one is the lifetime's query loss), capped at ``evaluation.loss_cap``.
Fixed (non-plastic) weights and biases are read from the current particle's parameters at every
truncation; only the plastic weights are carried. The update is Adam on θ with the estimate, clipped
to ``finetune.grad_clip``. No Python loop over particles: every truncation is one batched lifetime
under ``torch.no_grad`` (the fused kernel where it covers the model).
"""

from __future__ import annotations

import time
from typing import Any, Optional

import torch
from torch import Tensor

from ..config import Config
from ..evaluation import cap_loss
from ..genome import build_genome_spec
from ..learners import NetState, PlasticLearner
from ..lifetime import expand_params, query, tile
from ..seeding import Purpose, generator
from ..tasks import Episodes, make_task
from .base import optimizer_state

# index offset of PES's noise streams within Purpose.SEARCH (ES uses generation numbers from 0)
_NOISE_STREAM = 1 << 40


class PESTrainer:
    """PES over one genome ``θ [D]`` of the config's genome spec.

    Args:
        cfg: the run's config (task, model, ``evaluation.loss_cap``, ``finetune.grad_clip``).
        genome: ``[D]`` starting θ (default: the spec's initial vector).
        pairs: antithetic pairs (particles N = 2·pairs).
        sigma: standard deviation of the perturbations, in genome units.
        window: lifetime steps per truncation W (the last truncation of a lifetime may be shorter).
        lr: Adam's learning rate on θ.
        episodes: K common episodes per lifetime (all particles live the same ones).
    """

    name = "pes"

    def __init__(self, cfg: Config, genome: Optional[Tensor] = None, *, pairs: int = 16, sigma: float = 0.1,
                 window: int = 10, lr: float = 0.01, episodes: int = 4):
        if pairs < 1 or sigma <= 0 or window < 1 or lr <= 0 or episodes < 1:
            raise ValueError(f"PES needs pairs >= 1, sigma > 0, window >= 1, lr > 0, episodes >= 1 "
                             f"(got {pairs}, {sigma}, {window}, {lr}, {episodes})")
        self.cfg = cfg
        self.task = make_task(cfg.task)
        self.spec = build_genome_spec(cfg, self.task.n_in, self.task.n_out, self.task.kind)
        self.learner = PlasticLearner(self.spec.model, fused=cfg.evaluation.fused_kernel)
        self.pairs, self.sigma, self.window, self.episodes = pairs, sigma, window, episodes
        theta = self.spec.initial_vector() if genome is None else genome.detach().float().reshape(-1)
        self.theta = theta.clone().requires_grad_(True)                 # [D]
        self.optimizer = torch.optim.Adam([self.theta], lr=lr)
        self.step_count = 0                                             # truncations done
        self.lifetime = 0                                               # index of the lifetime being lived
        self.t = 0                                                      # its steps done
        self.xi = torch.zeros(pairs, self.spec.dim)                     # [pairs, D] accumulated ε of particle i
        self.plastic: tuple[Tensor, ...] = ()                           # carried plastic weights [N*K, out, in]
        self.counts: tuple[Tensor, ...] = ()                            # and a count-normalised rule's counts
        self._episodes: tuple[int, Episodes] | None = None

    # ---- the inner problem: one truncation of N particles ----
    def _current_episodes(self) -> Episodes:
        if self._episodes is None or self._episodes[0] != self.lifetime:
            eps = self.task.episodes(self.cfg.seed, Purpose.TRAIN, _NOISE_STREAM + self.lifetime, self.episodes)
            self._episodes = (self.lifetime, eps)
        return self._episodes[1]

    def _unroll(self, thetas: Tensor) -> tuple[Tensor, int]:
        """Live the next truncation with ``thetas [N, D]`` from the carried states; returns the
        truncation's loss ``[N]`` (capped, mean over episodes) and the step it ended at."""
        episodes = self._current_episodes()
        n, k, T = thetas.shape[0], self.episodes, episodes.num_steps
        params = expand_params(self.spec.decode(thetas), k)                    # {name: [N*K, ...]}
        state = self.learner.init_state(params)
        if self.plastic:                                                       # continue the lifetime
            weights = list(state.weights)
            for l, w in zip(self.spec.model.plastic_layers, self.plastic):
                weights[l - 1] = w
            state = NetState(tuple(weights), state.biases, self.counts or state.counts)
        t1 = min(T, self.t + self.window)
        for t in range(self.t, t1):
            x = tile(episodes.stream_x[:, t], n)                               # [N*K, m, n_in]
            y = tile(episodes.stream_y[:, t], n)
            state = self.learner.step(params, state, x, y)
        per_task, _ = query(self.learner, state, episodes.query_x, episodes.query_y, n, params)   # [N*K, n]
        seen = tile(episodes.seen_by_step()[:, t1 - 1], n).to(per_task.dtype)                   # [N*K, n]
        per_lifetime = (per_task * seen).sum(-1) / seen.sum(-1)                                  # [N*K]
        loss = cap_loss(per_lifetime.reshape(n, k), self.cfg.evaluation.loss_cap)[0].mean(-1)    # [N]
        self.plastic = tuple(state.weights[l - 1] for l in self.spec.model.plastic_layers) if t1 < T else ()
        self.counts = state.counts if t1 < T else ()
        return loss, t1

    @torch.no_grad()
    def estimate(self) -> tuple[Tensor, Tensor]:
        """Unroll one truncation and return ``(gradient estimate [D], particle losses [N])``; advances the
        particles' states (and ends their lifetime after its last step) but does not move θ."""
        gen = generator(self.cfg.seed, Purpose.SEARCH, _NOISE_STREAM + self.step_count)
        eps = torch.randn(self.pairs, self.spec.dim, generator=gen) * self.sigma        # [pairs, D]
        theta = self.theta.detach()
        loss, t1 = self._unroll(torch.cat([theta + eps, theta - eps]))                # [2*pairs]
        self.xi += eps
        diff = loss[:self.pairs] - loss[self.pairs:]                                    # [pairs]
        grad = (diff.unsqueeze(-1) * self.xi).mean(0) / (2 * self.sigma ** 2)           # [D]
        self.step_count += 1
        if t1 >= self._current_episodes().num_steps:                                   # lifetime over: restart
            self.lifetime, self.t = self.lifetime + 1, 0
            self.xi.zero_()
        else:
            self.t = t1
        return grad, loss

    def step(self) -> dict[str, float]:
        t0 = time.perf_counter()
        T = self._current_episodes().num_steps
        steps = min(self.window, T - self.t)
        grad, loss = self.estimate()
        finite = bool(torch.isfinite(grad).all())
        norm = float(grad.norm())
        if finite:
            clip = self.cfg.finetune.grad_clip
            if clip > 0 and norm > clip:
                grad = grad * (clip / norm)
            self.optimizer.zero_grad(set_to_none=True)
            self.theta.grad = grad.clone()
            self.optimizer.step()
        return {"meta_loss": float(loss.mean()), "grad_norm": norm, "skipped": float(not finite),
                "lifetimes": 2 * self.pairs * self.episodes * steps / T, "seconds": time.perf_counter() - t0}

    def best(self) -> Tensor:
        """``[D]`` θ now."""
        return self.theta.detach().clone()

    def state_dict(self) -> dict[str, Any]:
        return {"trainer": self.name, "theta": self.theta.detach().clone(), "optimizer": optimizer_state(self.optimizer),
                "step": self.step_count, "lifetime": self.lifetime, "t": self.t, "xi": self.xi.clone(),
                "plastic": [w.clone() for w in self.plastic], "counts": [c.clone() for c in self.counts]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        import copy

        with torch.no_grad():
            self.theta.copy_(state["theta"])
        self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        self.step_count, self.lifetime, self.t = int(state["step"]), int(state["lifetime"]), int(state["t"])
        self.xi = state["xi"].clone()
        self.plastic = tuple(w.clone() for w in state["plastic"])
        self.counts = tuple(c.clone() for c in state.get("counts", []))
