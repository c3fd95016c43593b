"""Scoring genomes: lifetimes -> capped losses -> fitness, learning measures and baselines.

The sign flip from loss to fitness happens here and nowhere else (:func:`fitness_from_loss`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from .config import Config
from .genome import GenomeSpec, build_genome_spec
from .learners import Learner, PlasticLearner
from .lifetime import expand_params, query, run_lifetime, tile
from .seeding import Purpose
from .tasks import Episodes, make_task


def fitness_from_loss(loss: Tensor) -> Tensor:
    """Fitness is the negative query loss (higher is better)."""
    return -loss


def cap_loss(loss: Tensor, cap: float) -> tuple[Tensor, Tensor]:
    """``(capped, bad)``: losses above ``cap`` or non-finite become ``cap``; ``bad`` marks non-finite ones."""
    bad = ~torch.isfinite(loss)
    return torch.where(bad, torch.full_like(loss, cap), loss.clamp(max=cap)), bad


@dataclass(frozen=True)
class Scores:
    """Scores of P parameter sets on K common episodes.

    loss:        [P] capped query loss, mean over episodes (MSE or cross-entropy)
    per_episode: [P, K] capped query loss of each episode
    nonfinite:   [P] bool, some episode of this genome diverged (NaN/Inf)
    accuracy:    [P] mean query accuracy (classification) or None
    curve:       [P, C] mean query loss over the tasks seen so far, at each curve point (or None)
    episode_gain:[P] query loss on episode k+1's tasks minus on episode k's own, after a lifetime on
                 episode k, mean over k (or None)
    nonfinite_episodes: [P, K] bool, which episodes diverged (NaN/Inf)
    accuracy_per_episode: [P, K] query accuracy of each episode (classification) or None
    curve_per_episode: [P, K, C] the curve of each episode (for bands over episodes), or None
    """

    loss: Tensor
    per_episode: Tensor
    nonfinite: Tensor
    accuracy: Optional[Tensor] = None
    curve: Optional[Tensor] = None
    episode_gain: Optional[Tensor] = None
    nonfinite_episodes: Optional[Tensor] = None
    accuracy_per_episode: Optional[Tensor] = None
    curve_per_episode: Optional[Tensor] = None

    @property
    def fitness(self) -> Tensor:
        return fitness_from_loss(self.loss)

    @property
    def num_nonfinite(self) -> int:
        return int(self.nonfinite.sum())


def score_params(learner: Learner, params: dict[str, Tensor], episodes: Episodes, *, cap: float,
                 learn: bool = True, curve: bool = False, episode_gain: bool = False, chunk: int = 0) -> Scores:
    """Score P parameter sets ``{name: [P, *shape]}`` on ``episodes`` (one batched lifetime).

    ``chunk``: run the population in slices of this many genomes, one batched lifetime each (0 = all at
    once). Wide layers run faster when a slice's weights stay in cache; the scores are the same.
    """
    p = next(iter(params.values())).shape[0]
    if 0 < chunk < p:
        parts = [score_params(learner, {n: v[i:i + chunk] for n, v in params.items()}, episodes, cap=cap,
                              learn=learn, curve=curve, episode_gain=episode_gain) for i in range(0, p, chunk)]
        return Scores(*(None if getattr(parts[0], f) is None else torch.cat([getattr(x, f) for x in parts])
                        for f in ("loss", "per_episode", "nonfinite", "accuracy", "curve", "episode_gain",
                                  "nonfinite_episodes", "accuracy_per_episode", "curve_per_episode")))
    k = episodes.num_episodes
    expanded = expand_params(params, k)
    out = run_lifetime(learner, expanded, episodes, p, learn=learn, curve=curve)
    per_episode, bad = cap_loss(out.query_loss.mean(-1).reshape(p, k), cap)
    acc_pk = None if out.query_acc is None else out.query_acc.mean(-1).reshape(p, k)
    accuracy = None if acc_pk is None else acc_pk.mean(-1)
    curve_pc = curve_pkc = None
    if curve:
        seen = tile(episodes.seen_mask(), p).to(out.curve.dtype)           # [B, C, n]
        seen_loss = (out.curve * seen).sum(-1) / seen.sum(-1)              # [B, C]
        curve_pkc = cap_loss(seen_loss, cap)[0].reshape(p, k, -1)         # [P, K, C]
        curve_pc = curve_pkc.mean(1)                                       # [P, C]
    gain = None
    if episode_gain:
        if k < 2:
            raise ValueError("the episode-specific gain needs at least 2 episodes")
        rolled = episodes.rolled(1)
        other, _ = query(learner, out.final, rolled.query_x, rolled.query_y, p, expanded)
        other_pk = cap_loss(other.mean(-1).reshape(p, k), cap)[0]
        gain = (other_pk - per_episode).mean(-1)
    return Scores(per_episode.mean(-1), per_episode, bad.any(-1), accuracy, curve_pc, gain, bad, acc_pk, curve_pkc)


class Evaluator:
    """Everything needed to score flat genomes of one config, on one device.

    Built from the config alone (in the driver or inside a Ray actor), so two evaluators of the same
    config give the same scores for the same genomes and generation. On a CPU it also applies
    :func:`evoplast.malloc.reuse_freed_memory` to its process (``evaluation.reuse_memory``).
    """

    def __init__(self, cfg: Config, device: torch.device | str = "cpu", spec: GenomeSpec | None = None):
        self.cfg = cfg
        self.device = torch.device(device)
        if cfg.evaluation.reuse_memory and self.device.type == "cpu":
            from .malloc import reuse_freed_memory

            reuse_freed_memory()
        self.task = make_task(cfg.task)
        self.spec: GenomeSpec = spec or build_genome_spec(cfg, self.task.n_in, self.task.n_out, self.task.kind)
        fused = cfg.evaluation.fused_kernel and self.device.type == "cpu" and not cfg.evaluation.compile
        self.learner = PlasticLearner(self.spec.model, fused=fused)
        self.fast_learner = self.learner           # the one evolution uses: compiled if asked
        if cfg.evaluation.compile:
            self.fast_learner = PlasticLearner(self.spec.model)
            self.fast_learner.step_and_predict = torch.compile(self.fast_learner.step_and_predict, dynamic=False)
        self.graphed = None                        # evolution's scorer on a GPU: one CUDA graph per shape
        if cfg.evaluation.cuda_graph and self.device.type == "cuda" and not cfg.evaluation.compile \
                and self.spec.model.features == "none":
            from .cuda_graphs import GraphedScorer

            self.graphed = GraphedScorer(lambda params, episodes: score_params(
                self.fast_learner, params, episodes, cap=cfg.evaluation.loss_cap))

    def episodes(self, purpose: Purpose, index: int, num_episodes: int, order: str | None = None) -> Episodes:
        return self.task.episodes(self.cfg.seed, purpose, index, num_episodes, self.device, order=order)

    def decode(self, genomes: Tensor) -> dict[str, Tensor]:
        """``[P, D]`` genomes -> ``{name: [P, *shape]}`` model values on this evaluator's device."""
        return self.spec.decode(genomes.as_subclass(torch.Tensor).to(self.device, torch.float32))

    @torch.no_grad()
    def fitness(self, genomes: Tensor, generation: int) -> tuple[Tensor, Tensor]:
        """``(fitness [P], nonfinite [P] bool)`` on generation ``generation``'s training episodes (CPU)."""
        episodes = self.episodes(Purpose.TRAIN, generation, self.cfg.evaluation.episodes)
        if self.graphed is not None:
            scores = self.graphed(self.decode(genomes), episodes)
        else:
            scores = score_params(self.fast_learner, self.decode(genomes), episodes,
                                  cap=self.cfg.evaluation.loss_cap, chunk=self.cfg.evaluation.chunk_size or 0)
        return scores.fitness.cpu(), scores.nonfinite.cpu()

    @torch.no_grad()
    def score(self, genomes: Tensor, *, learner: Learner | None = None, learn: bool = True,
              curve: bool = False, episode_gain: bool = False, order: str | None = None,
              episodes: Episodes | None = None, extra: dict[str, Tensor] | None = None) -> Scores:
        """Scores of ``genomes [P, D]`` on the held-out episodes (or on ``episodes``); ``extra`` adds
        per-genome parameters (e.g. ``{"sgd.lr": [P]}``)."""
        episodes = episodes or self.episodes(Purpose.HELDOUT, 0, self.cfg.evaluation.heldout_episodes, order)
        return score_params(learner or self.learner, self.decode(genomes) | (extra or {}), episodes,
                            cap=self.cfg.evaluation.loss_cap, learn=learn, curve=curve,
                            episode_gain=episode_gain)

    @torch.no_grad()
    def learning_measures(self, genome: Tensor) -> dict[str, float]:
        """Held-out ``loss``, ``loss_plasticity_off``, ``learning_gain`` (off - on) and ``episode_gain`` of
        one genome ``[D]``: the numbers every report carries beside the loss."""
        g = genome.reshape(1, -1)
        on = self.score(g, episode_gain=True)
        off = self.score(g, learn=False)
        return {"loss": on.loss.item(), "loss_plasticity_off": off.loss.item(),
                "learning_gain": (off.loss - on.loss).item(), "episode_gain": on.episode_gain.item()}
