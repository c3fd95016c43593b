"""Scoring genomes: lifetimes -> capped losses -> fitness, learning measures and baselines.

The sign flip from loss to fitness happens here and nowhere else (:func:`fitness_from_loss`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor

from .config import Config
from .genome import GenomeSpec, build_genome_spec
from .learners import GradientLearner, Learner, PlasticLearner
from .lifetime import expand_params, model_inputs, query, run_lifetime, tile
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

    def sgd_learner(self, feedback: str = "backprop", plastic_only: bool = False) -> GradientLearner:
        """Online SGD on every weight and bias, or (``plastic_only``) on exactly the weights the rule changes:
        the plastic layers' weights, no biases (for an output-only model, the delta rule)."""
        model = self.spec.model
        if plastic_only:
            return GradientLearner(model, self.cfg.evaluation.sgd_lrs[0], feedback, seed=self.cfg.seed,
                                   layers=model.plastic_layers, biases=False)
        return GradientLearner(model, self.cfg.evaluation.sgd_lrs[0], feedback, seed=self.cfg.seed)

    @torch.no_grad()
    def tuned_sgd(self, genome: Tensor, *, feedback: str = "backprop", order: str | None = None,
                  curve: bool = False, plastic_only: bool = False, refine: bool = False) -> tuple[Scores, float]:
        """Online SGD (or feedback alignment) from the initial weights of ``genome [D]``, on held-out episodes,
        with the learning rate from ``evaluation.sgd_lrs`` that is best on separate validation episodes.
        ``plastic_only``: on the plastic layers' weights alone (see :meth:`sgd_learner`). ``refine``: then also
        try the best rate times 2^(-1), 2^(-1/2), 2^(1/2), 2^1 and keep the best of all on validation.

        Returns ``(held-out scores, chosen learning rate)``. All rates of a grid run as one batch.
        """
        learner = self.sgd_learner(feedback, plastic_only)
        validation = self.task.episodes(self.cfg.seed, Purpose.VALIDATION, 0, self.cfg.evaluation.heldout_episodes,
                                        self.device, order=order)

        def validate(rates: list[float]) -> Tensor:
            lrs = torch.tensor(rates, device=self.device)
            genomes = genome.reshape(1, -1).expand(len(rates), -1)
            return score_params(learner, self.decode(genomes) | {"sgd.lr": lrs}, validation,
                                cap=self.cfg.evaluation.loss_cap).loss

        rates = list(self.cfg.evaluation.sgd_lrs)
        losses = validate(rates)
        if refine:
            coarse = rates[int(losses.argmin())]
            fine = [coarse * 2 ** e for e in (-1.0, -0.5, 0.5, 1.0)]
            rates, losses = rates + fine, torch.cat([losses, validate(fine)])
        best = rates[int(losses.argmin())]
        held = self.score(genome.reshape(1, -1), learner=learner, order=order, curve=curve,
                          extra={"sgd.lr": torch.tensor([best], device=self.device)})
        return held, best

    @torch.no_grad()
    def prototype(self, genome: Tensor, episodes: Episodes | None = None) -> Tensor:
        """Nearest-class-mean accuracy per held-out episode ``[K]`` (classification) on the features the output
        layer reads at the initial weights of ``genome [D]``."""
        from .science.baselines import output_layer_inputs, prototype_accuracy

        episodes = episodes or self.episodes(Purpose.HELDOUT, 0, self.cfg.evaluation.heldout_episodes)
        k, t, m = episodes.stream_task.shape
        _, n, q = episodes.query_y.shape
        params = self.decode(genome.reshape(1, -1))
        state = self.learner.init_state(expand_params(params, k))
        stream, _ = model_inputs(self.learner, params, episodes.stream_x.reshape(k, t * m, -1), 1)
        queries, _ = model_inputs(self.learner, params, episodes.query_x.reshape(k, n * q, -1), 1)
        h_stream = output_layer_inputs(state.weights, state.biases, stream)               # [K, T*m, F]
        h_query = output_layer_inputs(state.weights, state.biases, queries).reshape(k, n, q, -1)
        return prototype_accuracy(h_stream, episodes.stream_y.reshape(k, t * m), h_query, episodes.query_y,
                                  self.spec.model.n_out).mean(-1)

    def input_only_model(self, num_episodes: int = 32):
        """The input-only predictor (:class:`evoplast.science.baselines.InputOnlyRidge`), fitted once on the stream
        points of ``num_episodes`` training episodes (``Purpose.TRAIN``, index 0), its lengthscale chosen on
        validation episodes."""
        if getattr(self, "_input_only", None) is None:
            from .science.baselines import InputOnlyRidge
            from .seeding import generator

            train = self.task.episodes(self.cfg.seed, Purpose.TRAIN, 0, num_episodes, "cpu")
            chunks = [(sx.reshape(-1, sx.shape[-1]), sy.reshape(-1, *sy.shape[3:]))      # 8 episodes' points each
                      for sx, sy in zip(train.stream_x.split(8), train.stream_y.split(8))]
            val = self.task.episodes(self.cfg.seed, Purpose.VALIDATION, 0, 8, "cpu")
            classification = self.task.kind == "classification"
            vx = val.query_x.reshape(-1, val.query_x.shape[-1])
            vy = val.query_y.reshape(-1) if classification else val.query_y.reshape(-1, val.query_y.shape[-1])
            self._input_only = InputOnlyRidge.fit(chunks, (vx, vy), self.task.n_out,
                                                  generator(self.cfg.seed, Purpose.BASELINE, 1000),
                                                  classification=classification)
        return self._input_only

    @torch.no_grad()
    def input_only(self, episodes: Episodes | None = None) -> tuple[Tensor, Tensor | None]:
        """``(loss [K], accuracy [K] or None)`` of the input-only predictor on the held-out queries."""
        from .science.baselines import input_only_scores

        episodes = episodes or self.episodes(Purpose.HELDOUT, 0, self.cfg.evaluation.heldout_episodes)
        loss, acc = input_only_scores(self.input_only_model(), self.spec.model, episodes.to("cpu"))
        return loss.mean(-1), None if acc is None else acc.mean(-1)

    def transfer_evaluator(self, longer: int = 1, wider: int = 1) -> "Evaluator":
        """The same model on a stream with ``longer`` x the batches per task and ``wider`` x the rows per batch."""
        t = self.cfg.task
        cfg = self.cfg.replace(**{"task.batches_per_task": t.batches_per_task * longer,
                                  "task.batch_size": t.batch_size * wider})
        return Evaluator(cfg, self.device, spec=self.spec)

    @torch.no_grad()
    def transfer(self, genome: Tensor, factor: int = 4) -> dict[str, float]:
        """The same genome on a ``factor`` x longer stream (``transfer_long``), on ``factor`` x larger batches
        (``transfer_wide``) and on both (``transfer_both``; from the default's 10 x 8, the paper's 40 x 32):
        capped held-out loss, fraction of non-finite episodes (``*_nonfinite``), of episodes that diverged (non-finite
        or a loss at ``evaluation.loss_cap``, ``*_diverged``) and the same-parameter SGD
        baseline on the same streams (``*_sgd_plastic_weights``, its rate tuned there)."""
        out: dict[str, float] = {}
        for name, ev in (("transfer_long", self.transfer_evaluator(longer=factor)),
                         ("transfer_wide", self.transfer_evaluator(wider=factor)),
                         ("transfer_both", self.transfer_evaluator(longer=factor, wider=factor))):
            on = ev.score(genome.reshape(1, -1))
            sgd, lr = ev.tuned_sgd(genome, plastic_only=True, refine=True)
            diverged = on.nonfinite_episodes[0] | (on.per_episode[0] >= self.cfg.evaluation.loss_cap)
            out |= {name: float(on.loss[0]), f"{name}_nonfinite": float(on.nonfinite_episodes[0].float().mean()),
                    f"{name}_diverged": float(diverged.float().mean()),
                    f"{name}_sgd_plastic_weights": float(sgd.loss[0]), f"{name}_sgd_plastic_weights_lr": lr}
        return out

    @torch.no_grad()
    def report(self, genome: Tensor, order: str | None = None, transfer: bool = True) -> dict[str, Any]:
        """Held-out report of one genome ``[D]``: its loss, the learning measures and the baselines.

        Keys: ``loss`` (plastic), ``loss_plasticity_off``, ``learning_gain`` (off - on), ``episode_gain``,
        ``input_only`` (the best input-only predictor, fitted on training episodes: what a genome gets
        without learning); baselines with their tuned learning rates (``*_lr``): ``sgd_plastic_weights``
        (SGD on exactly the weights the rule changes, from the same initial weights; its rate refined on a
        finer grid around the best of ``evaluation.sgd_lrs``), ``sgd_same_init``
        (every weight and bias), ``fa_same_init``, ``sgd_iid_same_init`` (SGD on the shuffled stream),
        ``sgd_seed_init`` (SGD from the seed's initial weights); classification: ``*_accuracy`` beside each,
        and ``prototype_accuracy`` (nearest class mean on the output layer's input at the initial weights);
        regression (``transfer``): :meth:`transfer` rows; curves ``curve`` / ``curve_sgd_*``;
        ``per_episode`` (and ``per_episode_accuracy``): ``{key: [K]}`` per held-out episode, for paired
        differences.
        """
        g = genome.reshape(1, -1)
        seed_genome = self.spec.initial_vector()
        on = self.score(g, curve=True, episode_gain=True, order=order)
        off = self.score(g, learn=False, order=order, curve=True)
        same, same_lr = self.tuned_sgd(genome, order=order, curve=True, plastic_only=True, refine=True)
        sgd, sgd_lr = self.tuned_sgd(genome, order=order, curve=True)
        fa, fa_lr = self.tuned_sgd(genome, feedback="alignment", order=order, curve=True)
        iid, iid_lr = self.tuned_sgd(genome, order="iid", curve=True)
        sgd_seed, seed_lr = self.tuned_sgd(seed_genome, order=order, curve=True)
        held = self.episodes(Purpose.HELDOUT, 0, self.cfg.evaluation.heldout_episodes, order)
        input_loss, input_acc = self.input_only(held)
        scores = {"loss": on, "loss_plasticity_off": off, "sgd_plastic_weights": same, "sgd_same_init": sgd,
                  "fa_same_init": fa, "sgd_iid_same_init": iid, "sgd_seed_init": sgd_seed}
        report: dict[str, Any] = {
            "loss": float(on.loss[0]),
            "loss_plasticity_off": float(off.loss[0]),
            "learning_gain": float(off.loss[0] - on.loss[0]),
            "episode_gain": float(on.episode_gain[0]),
            "sgd_plastic_weights": float(same.loss[0]), "sgd_plastic_weights_lr": same_lr,
            "sgd_same_init": float(sgd.loss[0]), "sgd_same_init_lr": sgd_lr,
            "fa_same_init": float(fa.loss[0]), "fa_same_init_lr": fa_lr,
            "sgd_iid_same_init": float(iid.loss[0]), "sgd_iid_same_init_lr": iid_lr,
            "sgd_seed_init": float(sgd_seed.loss[0]), "sgd_seed_init_lr": seed_lr,
            "curve": on.curve[0].tolist(),
            "curve_sgd_plastic_weights": same.curve[0].tolist(),
            "curve_sgd_same_init": sgd.curve[0].tolist(),
            "curve_sgd_seed_init": sgd_seed.curve[0].tolist(),
            "per_episode": {k: v.per_episode[0].tolist() for k, v in scores.items()},
            "curves_per_episode": {k: v.curve_per_episode[0].tolist() for k, v in scores.items()
                                   if v.curve_per_episode is not None},                 # {key: [K][C]}
        }
        if on.accuracy is None:
            report["input_only"] = float(input_loss.mean())
            report["per_episode"]["input_only"] = input_loss.tolist()
            if transfer:
                report |= self.transfer(genome)
        else:   # classification: the accuracy of each, beside its loss
            proto = self.prototype(genome, held)
            report["prototype_accuracy"] = float(proto.mean())
            report["input_only_accuracy"] = float(input_acc.mean())
            names = {"loss": "accuracy", "loss_plasticity_off": "accuracy_plasticity_off"}
            report["per_episode_accuracy"] = {names.get(k, k): v.accuracy_per_episode[0].tolist()
                                              for k, v in scores.items()}
            report["per_episode_accuracy"] |= {"prototype": proto.tolist(), "input_only": input_acc.tolist()}
            for key, sc in (("accuracy", on), ("accuracy_plasticity_off", off),
                            ("sgd_plastic_weights_accuracy", same), ("sgd_same_init_accuracy", sgd),
                            ("fa_same_init_accuracy", fa), ("sgd_iid_same_init_accuracy", iid),
                            ("sgd_seed_init_accuracy", sgd_seed)):
                report[key] = float(sc.accuracy[0])
        return report
