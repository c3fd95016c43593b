"""BPTT as an outer trainer: Adam on one genome through the lifetime (full, truncated or checkpointed).

The meta-step is :class:`evoplast.trainers.meta_bptt.MetaTrainer`'s: ``finetune.episodes`` fresh episodes per step
(derived from ``(seed, step)``), full BPTT (``finetune.bptt_window = null``), truncated BPTT (window W) or
activation checkpointing (``finetune.checkpoint_activations``).
"""

from __future__ import annotations

import copy
import time
from typing import Any, Optional

import torch
from torch import Tensor

from ..config import Config
from ..genome import GenomeSpec, build_genome_spec
from .meta_bptt import MetaTrainer
from ..tasks import make_task
from .base import optimizer_state


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
