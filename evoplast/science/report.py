"""The science report of a genome: its held-out loss beside every baseline that answers "is the learned rule
any good?" -- online SGD of the same weights (tuned learning rate), feedback alignment, SGD from the seed's
weights and on the shuffled stream, prototypes (classification), the input-only predictor, transfer to longer
and wider streams.

Functions of an :class:`~evoplast.evaluation.Evaluator` (which scores genomes; this module compares them with
the baselines). Used by the evolution run's final report, ``scripts/evaluate.py`` and ``scripts/seeds.py``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..evaluation import Evaluator, Scores, score_params
from ..learners import GradientLearner
from ..lifetime import expand_params, model_inputs
from ..seeding import Purpose
from ..tasks import Episodes


def sgd_learner(ev: Evaluator, feedback: str = "backprop", plastic_only: bool = False) -> GradientLearner:
    """Online SGD on every weight and bias, or (``plastic_only``) on exactly the weights the rule changes:
    the plastic layers' weights, no biases (for an output-only model, the delta rule)."""
    model = ev.spec.model
    if plastic_only:
        return GradientLearner(model, ev.cfg.evaluation.sgd_lrs[0], feedback, seed=ev.cfg.seed,
                               layers=model.plastic_layers, biases=False)
    return GradientLearner(model, ev.cfg.evaluation.sgd_lrs[0], feedback, seed=ev.cfg.seed)

@torch.no_grad()
def tuned_sgd(ev: Evaluator, genome: Tensor, *, feedback: str = "backprop", order: str | None = None,
              curve: bool = False, plastic_only: bool = False, refine: bool = False) -> tuple[Scores, float]:
    """Online SGD (or feedback alignment) from the initial weights of ``genome [D]``, on held-out episodes,
    with the learning rate from ``evaluation.sgd_lrs`` that is best on separate validation episodes.
    ``plastic_only``: on the plastic layers' weights alone (see :func:`sgd_learner`). ``refine``: then also
    try the best rate times 2^(-1), 2^(-1/2), 2^(1/2), 2^1 and keep the best of all on validation.

    Returns ``(held-out scores, chosen learning rate)``. All rates of a grid run as one batch.
    """
    learner = sgd_learner(ev, feedback, plastic_only)
    validation = ev.task.episodes(ev.cfg.seed, Purpose.VALIDATION, 0, ev.cfg.evaluation.heldout_episodes,
                                    ev.device, order=order)

    def validate(rates: list[float]) -> Tensor:
        lrs = torch.tensor(rates, device=ev.device)
        genomes = genome.reshape(1, -1).expand(len(rates), -1)
        return score_params(learner, ev.decode(genomes) | {"sgd.lr": lrs}, validation,
                            cap=ev.cfg.evaluation.loss_cap).loss

    rates = list(ev.cfg.evaluation.sgd_lrs)
    losses = validate(rates)
    if refine:
        coarse = rates[int(losses.argmin())]
        fine = [coarse * 2 ** e for e in (-1.0, -0.5, 0.5, 1.0)]
        rates, losses = rates + fine, torch.cat([losses, validate(fine)])
    best = rates[int(losses.argmin())]
    held = ev.score(genome.reshape(1, -1), learner=learner, order=order, curve=curve,
                      extra={"sgd.lr": torch.tensor([best], device=ev.device)})
    return held, best

@torch.no_grad()
def prototype(ev: Evaluator, genome: Tensor, episodes: Episodes | None = None) -> Tensor:
    """Nearest-class-mean accuracy per held-out episode ``[K]`` (classification) on the features the output
    layer reads at the initial weights of ``genome [D]``."""
    from .baselines import output_layer_inputs, prototype_accuracy

    episodes = episodes or ev.episodes(Purpose.HELDOUT, 0, ev.cfg.evaluation.heldout_episodes)
    k, t, m = episodes.stream_task.shape
    _, n, q = episodes.query_y.shape
    params = ev.decode(genome.reshape(1, -1))
    state = ev.learner.init_state(expand_params(params, k))
    stream, _ = model_inputs(ev.learner, params, episodes.stream_x.reshape(k, t * m, -1), 1)
    queries, _ = model_inputs(ev.learner, params, episodes.query_x.reshape(k, n * q, -1), 1)
    h_stream = output_layer_inputs(state.weights, state.biases, stream)               # [K, T*m, F]
    h_query = output_layer_inputs(state.weights, state.biases, queries).reshape(k, n, q, -1)
    return prototype_accuracy(h_stream, episodes.stream_y.reshape(k, t * m), h_query, episodes.query_y,
                              ev.spec.model.n_out).mean(-1)

def input_only_model(ev: Evaluator, num_episodes: int = 32):
    """The input-only predictor (:class:`evoplast.science.baselines.InputOnlyRidge`), fitted once on the stream
    points of ``num_episodes`` training episodes (``Purpose.TRAIN``, index 0), its lengthscale chosen on
    validation episodes."""
    if getattr(ev, "_input_only", None) is None:
        from .baselines import InputOnlyRidge
        from ..seeding import generator

        train = ev.task.episodes(ev.cfg.seed, Purpose.TRAIN, 0, num_episodes, "cpu")
        chunks = [(sx.reshape(-1, sx.shape[-1]), sy.reshape(-1, *sy.shape[3:]))      # 8 episodes' points each
                  for sx, sy in zip(train.stream_x.split(8), train.stream_y.split(8))]
        val = ev.task.episodes(ev.cfg.seed, Purpose.VALIDATION, 0, 8, "cpu")
        classification = ev.task.kind == "classification"
        vx = val.query_x.reshape(-1, val.query_x.shape[-1])
        vy = val.query_y.reshape(-1) if classification else val.query_y.reshape(-1, val.query_y.shape[-1])
        ev._input_only = InputOnlyRidge.fit(chunks, (vx, vy), ev.task.n_out,
                                              generator(ev.cfg.seed, Purpose.BASELINE, 1000),
                                              classification=classification)
    return ev._input_only

@torch.no_grad()
def input_only(ev: Evaluator, episodes: Episodes | None = None) -> tuple[Tensor, Tensor | None]:
    """``(loss [K], accuracy [K] or None)`` of the input-only predictor on the held-out queries."""
    from .baselines import input_only_scores

    episodes = episodes or ev.episodes(Purpose.HELDOUT, 0, ev.cfg.evaluation.heldout_episodes)
    loss, acc = input_only_scores(input_only_model(ev), ev.spec.model, episodes.to("cpu"))
    return loss.mean(-1), None if acc is None else acc.mean(-1)

def transfer_evaluator(ev: Evaluator, longer: int = 1, wider: int = 1) -> Evaluator:
    """The same model on a stream with ``longer`` x the batches per task and ``wider`` x the rows per batch."""
    t = ev.cfg.task
    cfg = ev.cfg.replace(**{"task.batches_per_task": t.batches_per_task * longer,
                              "task.batch_size": t.batch_size * wider})
    return Evaluator(cfg, ev.device, spec=ev.spec)

@torch.no_grad()
def transfer_rows(ev: Evaluator, genome: Tensor, factor: int = 4) -> dict[str, float]:
    """The same genome on a ``factor`` x longer stream (``transfer_long``), on ``factor`` x larger batches
    (``transfer_wide``) and on both (``transfer_both``; from the default's 10 x 8, the paper's 40 x 32):
    capped held-out loss, fraction of non-finite episodes (``*_nonfinite``), of episodes that diverged (non-finite
    or a loss at ``evaluation.loss_cap``, ``*_diverged``) and the same-parameter SGD
    baseline on the same streams (``*_sgd_plastic_weights``, its rate tuned there)."""
    out: dict[str, float] = {}
    for name, other in (("transfer_long", transfer_evaluator(ev, longer=factor)),
                     ("transfer_wide", transfer_evaluator(ev, wider=factor)),
                     ("transfer_both", transfer_evaluator(ev, longer=factor, wider=factor))):
        on = other.score(genome.reshape(1, -1))
        sgd, lr = tuned_sgd(other, genome, plastic_only=True, refine=True)
        diverged = on.nonfinite_episodes[0] | (on.per_episode[0] >= ev.cfg.evaluation.loss_cap)
        out |= {name: float(on.loss[0]), f"{name}_nonfinite": float(on.nonfinite_episodes[0].float().mean()),
                f"{name}_diverged": float(diverged.float().mean()),
                f"{name}_sgd_plastic_weights": float(sgd.loss[0]), f"{name}_sgd_plastic_weights_lr": lr}
    return out

@torch.no_grad()
def report(ev: Evaluator, genome: Tensor, order: str | None = None, transfer: bool = True) -> dict[str, Any]:
    """Held-out report of one genome ``[D]``: its loss, the learning measures and the baselines.

    Keys: ``loss`` (plastic), ``loss_plasticity_off``, ``learning_gain`` (off - on), ``episode_gain``,
    ``input_only`` (the best input-only predictor, fitted on training episodes: what a genome gets
    without learning); baselines with their tuned learning rates (``*_lr``): ``sgd_plastic_weights``
    (SGD on exactly the weights the rule changes, from the same initial weights; its rate refined on a
    finer grid around the best of ``evaluation.sgd_lrs``), ``sgd_same_init``
    (every weight and bias), ``fa_same_init``, ``sgd_iid_same_init`` (SGD on the shuffled stream),
    ``sgd_seed_init`` (SGD from the seed's initial weights); classification: ``*_accuracy`` beside each,
    and ``prototype_accuracy`` (nearest class mean on the output layer's input at the initial weights);
    regression (``transfer``): :func:`transfer_rows`; curves ``curve`` / ``curve_sgd_*``;
    ``per_episode`` (and ``per_episode_accuracy``): ``{key: [K]}`` per held-out episode, for paired
    differences.
    """
    g = genome.reshape(1, -1)
    seed_genome = ev.spec.initial_vector()
    on = ev.score(g, curve=True, episode_gain=True, order=order)
    off = ev.score(g, learn=False, order=order, curve=True)
    same, same_lr = tuned_sgd(ev, genome, order=order, curve=True, plastic_only=True, refine=True)
    sgd, sgd_lr = tuned_sgd(ev, genome, order=order, curve=True)
    fa, fa_lr = tuned_sgd(ev, genome, feedback="alignment", order=order, curve=True)
    iid, iid_lr = tuned_sgd(ev, genome, order="iid", curve=True)
    sgd_seed, seed_lr = tuned_sgd(ev, seed_genome, order=order, curve=True)
    held = ev.episodes(Purpose.HELDOUT, 0, ev.cfg.evaluation.heldout_episodes, order)
    input_loss, input_acc = input_only(ev, held)
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
            report |= transfer_rows(ev, genome)
    else:   # classification: the accuracy of each, beside its loss
        proto = prototype(ev, genome, held)
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
