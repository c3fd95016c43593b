"""NRES: noise-reuse evolution strategies (Li, Xu, Huang, Lin, Xing & Ma, NeurIPS 2023) over the batched lifetime.

The online ES of :mod:`evoplast.trainers.pes`, with one change: each particle draws **one** perturbation
``ε_i`` when its lifetime begins and keeps it for every truncation of that lifetime. A truncation's
estimate is then the plain antithetic one,

    g = mean_i (L_τ(θ + ε_i) − L_τ(θ − ε_i)) ε_i / (2 σ²),

and since particle i has lived its whole lifetime so far under θ + ε_i, ``L_τ(θ + ε_i)`` is the truncation's
loss of a lifetime lived entirely with θ + ε_i: the estimate is unbiased for the gradient of the Gaussian-
smoothed ``Σ_τ L_τ`` (with θ fixed over the lifetime), like PES, but its variance does not grow with the
number of truncations as PES's ``ξ = Σ ε`` does (Li et al., Thm. 5). A test checks the unbiasedness on a
tiny problem against the autograd gradient of the same sum.

Simplifications against the paper: the particles are in step (all start their lifetime together on the
same K episodes: common random numbers across the population), not staggered; θ moves after every
truncation (online), so late truncations of a lifetime are lived with the θ of its earlier updates, the
same online bias PES has. Everything else (the carried plastic weights, the capped loss over the tasks
seen so far, Adam with ``finetune.grad_clip``, no loop over particles) is :class:`PESTrainer`'s.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..seeding import Purpose, generator
from .pes import PESTrainer

# index offset of NRES's noise streams within Purpose.SEARCH (ES: generations from 0; PES: 1 << 40)
_NOISE_STREAM = 3 << 40


class NRESTrainer(PESTrainer):
    """NRES over one genome ``θ [D]``; the arguments are :class:`PESTrainer`'s (``pairs``, ``sigma``,
    ``window``, ``lr``, ``episodes``). ``xi [pairs, D]`` holds the lifetime's perturbations ``ε_i``."""

    name = "nres"

    def _lifetime_noise(self) -> Tensor:
        """``[pairs, D]`` the perturbations of lifetime ``self.lifetime`` (derived from the run's seed)."""
        gen = generator(self.cfg.seed, Purpose.SEARCH, _NOISE_STREAM + self.lifetime)
        return torch.randn(self.pairs, self.spec.dim, generator=gen) * self.sigma

    @torch.no_grad()
    def estimate(self) -> tuple[Tensor, Tensor]:
        """Unroll one truncation and return ``(gradient estimate [D], particle losses [N])``; advances the
        particles' states (and ends their lifetime after its last step) but does not move θ."""
        if self.t == 0:                                   # a new lifetime: one ε per particle for all of it
            self.xi = self._lifetime_noise()
        eps = self.xi
        theta = self.theta.detach()
        loss, t1 = self._unroll(torch.cat([theta + eps, theta - eps]))                # [2*pairs]
        diff = loss[:self.pairs] - loss[self.pairs:]                                    # [pairs]
        grad = (diff.unsqueeze(-1) * eps).mean(0) / (2 * self.sigma ** 2)               # [D]
        self.step_count += 1
        if t1 >= self._current_episodes().num_steps:                                   # lifetime over: restart
            self.lifetime, self.t = self.lifetime + 1, 0
        else:
            self.t = t1
        return grad, loss

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "trainer": self.name}
