"""BPTT as an outer trainer: Adam on genomes through the lifetime (full, truncated or checkpointed).

:class:`MetaTrainer` is the meta-step; :class:`BPTTTrainer` puts it behind the outer trainers' protocol
(``finetune.episodes`` fresh episodes per step, derived from ``(seed, step)``).

A meta-step lives K fresh episodes (``Purpose.FINETUNE``, index = meta-step) with each of the P genomes
under autograd and takes one Adam step on the unconstrained genome values ``[P, D]`` (P genomes are
fine-tuned side by side; Adam is elementwise, so they do not interact).

Memory: parameters enter the lifetime as detached leaf tensors; the decode graph (genome -> parameters)
is backpropagated once per meta-step from the leaves' accumulated gradients. Nothing of a meta-step's
graph survives it, so memory is flat over meta-steps. Within a meta-step:

* full BPTT (``bptt_window`` null): meta-loss = query loss after the lifetime, graph through every step;
* truncated BPTT (window W): after every W steps the query loss over the tasks seen so far is
  backpropagated through that window only and the state is detached; meta-loss = the mean of those
  window losses (the last one is the full query loss), so memory is bounded by one window;
* ``checkpoint_activations``: each step's activations are recomputed in the backward pass.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor

from ..config import Config
from ..genome import GenomeSpec, build_genome_spec
from ..learners import NetState, PlasticLearner
from ..lifetime import expand_params, query, run_lifetime, tile
from ..seeding import Purpose
from ..tasks import Episodes, make_task
from .base import optimizer_state


@dataclass
class MetaStepResult:
    loss: Tensor          # [P] meta-loss per genome (mean over episodes)
    grad_norm: Tensor     # [P] gradient norm before clipping
    skipped: bool         # a non-finite loss or gradient: no update this step


def meta_loss_backward(learner, spec: GenomeSpec, genomes: Tensor, episodes: Episodes, *,
                  window: int = 0, checkpoint_activations: bool = False, cap: float = 1e4) -> Tensor:
    """Meta-loss ``[P]`` of ``genomes [P, D]`` (``requires_grad``), returned detached after it has been
    back-propagated: its gradient is accumulated into ``genomes.grad`` (the mean over windows when
    ``window`` truncates the lifetime)."""
    p, k = genomes.shape[0], episodes.num_episodes
    decoded = expand_params(spec.decode(genomes), k)                        # {name: [P*K, ...]}, graph to genomes
    leaves = {n: v.detach().requires_grad_(v.requires_grad) for n, v in decoded.items()}
    seen = episodes.seen_by_step()                                           # [K, T, n]
    windows = max(1, math.ceil(episodes.num_steps / window)) if window else 1
    window_losses: list[Tensor] = []
    diverged = torch.zeros(p * k, dtype=torch.bool, device=genomes.device)            # [P*K]

    def loss_of(state: NetState, seen_tasks: Tensor) -> Tensor:
        nonlocal diverged
        per_task, _ = query(learner, state, episodes.query_x, episodes.query_y, p, leaves)   # [P*K, n]
        mask = tile(seen_tasks, p).to(per_task.dtype)                                  # [P*K, n]
        per_lifetime = (per_task * mask).sum(-1) / mask.sum(-1)
        bad = ~torch.isfinite(per_lifetime)
        diverged = diverged | bad
        # a diverged lifetime counts as the cap and contributes no gradient (its slice of the leaves' gradient
        # is zeroed below); before, one diverged episode made the whole meta-step non-finite and skipped, and a
        # genome where some episode always diverges never moved again
        per_lifetime = torch.where(bad, torch.full_like(per_lifetime, cap), per_lifetime.clamp(max=cap))
        return per_lifetime.reshape(p, k).mean(-1)                                     # [P]

    plastic = set(spec.model.plastic_layers)

    def on_truncate(t: int, state: NetState) -> NetState:
        loss = loss_of(state, seen[:, t])
        (loss.sum() / windows).backward()
        window_losses.append(loss.detach())
        # cut the graph at the plastic weights; fixed weights and biases stay the parameter leaves
        return NetState(tuple(w.detach().requires_grad_(w.requires_grad) if l in plastic else w
                              for l, w in enumerate(state.weights, start=1)), state.biases,
                        tuple(c.detach() for c in state.counts))

    with torch.enable_grad():
        out = run_lifetime(learner, leaves, episodes, p, truncate_every=window,
                           on_truncate=on_truncate if window else None,
                           checkpoint_steps=checkpoint_activations)
        final = loss_of(out.final, seen[:, -1])
        (final.sum() / windows).backward()
        window_losses.append(final.detach())
        grads = [leaves[n].grad if leaves[n].grad is not None else torch.zeros_like(leaves[n])
                 for n in decoded]
        if diverged.any() and not diverged.all():     # every lifetime diverged: non-finite, the step is skipped
            keep = (~diverged).to(grads[0].dtype)
            grads = [torch.where(keep.reshape(-1, *[1] * (g.dim() - 1)) > 0, g, torch.zeros_like(g)) for g in grads]
        torch.autograd.backward([decoded[n] for n in decoded if decoded[n].requires_grad],
                                [g for n, g in zip(decoded, grads) if decoded[n].requires_grad])
    return torch.stack(window_losses).mean(0)


class MetaTrainer:
    """Adam over genomes ``[P, D]`` of ``spec`` (its evolved/trained segments); state = genomes + Adam.

    ``learner`` is the FLP rule by default; the OML baseline meta-trains an SGD learner's initial weights.
    """

    def __init__(self, cfg: Config, spec: GenomeSpec, genomes: Tensor, device: torch.device | str = "cpu",
                 learner=None):
        self.cfg = cfg
        self.spec = spec
        self.device = torch.device(device)
        self.task = make_task(cfg.task)
        self.learner = learner or PlasticLearner(spec.model)
        self.genomes = genomes.detach().to(self.device, torch.float32).clone().requires_grad_(True)
        self.optimizer = torch.optim.Adam([self.genomes], lr=cfg.finetune.lr)
        self.step_count = 0
        self.skipped = 0

    def step(self) -> MetaStepResult:
        f = self.cfg.finetune
        episodes = self.task.episodes(self.cfg.seed, Purpose.FINETUNE, self.step_count, f.episodes, self.device)
        self.optimizer.zero_grad(set_to_none=True)
        loss = meta_loss_backward(self.learner, self.spec, self.genomes, episodes, window=f.bptt_window,
                             checkpoint_activations=f.checkpoint_activations,
                             cap=self.cfg.evaluation.loss_cap)
        grad = self.genomes.grad
        norm = grad.norm(dim=-1)                                              # [P]
        skipped = not (torch.isfinite(loss).all() and torch.isfinite(grad).all())
        if skipped:
            self.skipped += 1
        else:
            if f.grad_clip > 0:
                grad.mul_((f.grad_clip / (norm + 1e-12)).clamp(max=1.0).unsqueeze(-1))
            self.optimizer.step()
        self.step_count += 1
        return MetaStepResult(loss.detach().cpu(), norm.detach().cpu(), skipped)

    def current(self) -> Tensor:
        """``[P, D]`` the genomes now (detached, CPU)."""
        return self.genomes.detach().cpu().clone()


def with_finetune(cfg: Config, **changes) -> Config:
    """``cfg`` with some ``finetune.*`` fields replaced (None values are left as they are)."""
    changes = {k: v for k, v in changes.items() if v is not None}
    return cfg.replace(**{f"finetune.{k}": v for k, v in changes.items()}) if changes else cfg


class BPTTTrainer:
    """Gradient meta-training of one genome ``[D]`` or ``k`` at once ``[k, D]`` (each its own Adam state
    and episodes; the config's genome spec, i.e. its evolved segments, unless ``spec`` is given).

    Args:
        cfg: the run's config; ``finetune.lr``, ``episodes``, ``bptt_window``, ``checkpoint_activations``,
            ``grad_clip`` set the meta-steps (the keyword arguments override them).
        genome: ``[D]`` or ``[k, D]`` starting genome(s) (default: the spec's initial vector, from scratch).
        spec: the genome spec to train in (e.g. with more segments trained, :func:`evoplast.runs.finetune.train_spec_of`).
        device: where to meta-train.

    Its metrics are the mean over the k genomes, plus ``meta/loss_g{i}`` per genome when given ``[k, D]``, and
    ``skipped_steps`` (updates skipped for a non-finite gradient so far).
    """

    name = "bptt"

    def __init__(self, cfg: Config, genome: Optional[Tensor] = None, *, window: Optional[int] = None,
                 checkpoint: Optional[bool] = None, lr: Optional[float] = None, episodes: Optional[int] = None,
                 spec: Optional[GenomeSpec] = None, device: str = "cpu"):
        self.cfg = with_finetune(cfg, bptt_window=window, checkpoint_activations=checkpoint, lr=lr, episodes=episodes)
        if spec is None:
            task = make_task(cfg.task)
            spec = build_genome_spec(cfg, task.n_in, task.n_out, task.kind)
        self.spec = spec
        genome = self.spec.initial_vector() if genome is None else genome
        self.inner = MetaTrainer(self.cfg, self.spec, genome.reshape(-1, self.spec.dim), device)
        self.k = self.inner.genomes.shape[0]
        self.per_genome = genome.dim() == 2          # [k, D] given: meta/loss_g{i} per genome, even for k = 1

    def step(self) -> dict[str, float]:
        t0 = time.perf_counter()
        r = self.inner.step()
        m = {"meta_loss": float(r.loss.mean()), "grad_norm": float(r.grad_norm.mean()), "skipped": float(r.skipped),
             "skipped_steps": float(self.inner.skipped), "lifetimes": float(self.cfg.finetune.episodes * self.k),
             "seconds": time.perf_counter() - t0}
        if self.per_genome:
            m |= {f"meta/loss_g{i}": float(v) for i, v in enumerate(r.loss.tolist())}
        return m

    def current(self) -> Tensor:
        """``[k, D]`` the genomes now."""
        return self.inner.current()

    def best(self) -> Tensor:
        """``[D]`` the (first) genome now."""
        return self.inner.current()[0]

    def state_dict(self) -> dict[str, Any]:
        return {"trainer": self.name, "genome": self.inner.genomes.detach().clone(),
                "optimizer": optimizer_state(self.inner.optimizer), "step": self.inner.step_count,
                "skipped": self.inner.skipped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.inner.genomes.copy_(state["genome"])
        self.inner.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        self.inner.step_count = int(state["step"])
        self.inner.skipped = int(state["skipped"])
