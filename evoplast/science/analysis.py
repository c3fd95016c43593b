"""The paper's analyses: how the evolved updates relate to gradient descent, and how much they interfere.

* :func:`update_gradient_cosine` — per plastic layer and lifetime step, the cosine between the rule's
  weight update and the negative gradient of that step's online loss (what SGD would do).
* :func:`forgetting_matrix` — query loss and accuracy on every task after each task of the stream
  (row j = after task j, column i = task i); the upper triangle is tasks not yet seen.
* :func:`oml_init` — the OML-style baseline: initial weights (the representation) meta-learned by BPTT so
  that online SGD of the output layer alone learns the episode, with a meta-learned learning rate.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import Config
from ..evaluation import Evaluator, score_params
from ..genome import GenomeSpec, Segment
from ..learners import GradientLearner, NetState
from ..lifetime import expand_params, model_inputs, tile
from ..trainers.bptt import MetaTrainer
from ..network import forward
from ..seeding import Purpose
from ..tasks import Episodes


def _online_loss(spec, y_hat: Tensor, y: Tensor) -> Tensor:
    """The loss SGD descends at one step, per lifetime ``[B]``: mean over rows of 1/2 ||y - y_hat||^2, or CE."""
    if spec.kind == "regression":
        return 0.5 * (y_hat - y).square().sum(-1).mean(-1)
    return F.cross_entropy(y_hat.transpose(1, 2), y, reduction="none").mean(-1)


@torch.no_grad()
def update_gradient_cosine(ev: Evaluator, genome: Tensor, episodes: Episodes) -> Tensor:
    """``[T, len(plastic layers)]``: mean over episodes of cos(dW_rule, -dLoss/dW) at each step."""
    learner = ev.learner
    spec = learner.spec
    k = episodes.num_episodes
    params = expand_params(ev.decode(genome.reshape(1, -1)), k)
    stream, tiled = model_inputs(learner, params, episodes.stream_x, 1)
    state = learner.init_state(params)
    rows = []
    for t in range(episodes.num_steps):
        x = stream[:, t] if tiled else tile(stream[:, t], 1)
        y = tile(episodes.stream_y[:, t], 1)
        leaves = [w.detach().clone().requires_grad_(True) for w in state.weights]
        with torch.enable_grad():
            _, y_hat = forward(tuple(leaves), state.biases, x)
            loss = _online_loss(spec, y_hat, y).sum()
            grads = torch.autograd.grad(loss, [leaves[l - 1] for l in spec.plastic_layers])
        new = learner.step(params, NetState(tuple(w.clone() for w in state.weights), state.biases, state.counts), x, y,
                           inplace=False)
        cos = [F.cosine_similarity((new.weights[l - 1] - state.weights[l - 1]).flatten(1), -g.flatten(1), dim=1)
               for l, g in zip(spec.plastic_layers, grads)]
        rows.append(torch.stack(cos, -1).nan_to_num(0.0).mean(0))           # [n plastic]
        state = new
    return torch.stack(rows)


@torch.no_grad()
def forgetting_matrix(ev: Evaluator, genome: Tensor, episodes: Episodes, learner=None,
                      extra: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
    """``{"loss": [C, n], "accuracy": [C, n] or absent}``: query loss / accuracy on task i (column) after the
    stream's block of task j (row), mean over episodes, for ``learner`` (default: the evolved rule)."""
    from ..lifetime import run_lifetime

    learner = learner or ev.learner
    params = ev.decode(genome.reshape(1, -1)) | (extra or {})
    out = run_lifetime(learner, expand_params(params, episodes.num_episodes), episodes, 1, curve=True)
    result = {"loss": out.curve.mean(0)}
    if out.curve_acc is not None:
        result["accuracy"] = out.curve_acc.mean(0)
    return result


def oml_spec(spec: GenomeSpec, lr: float) -> GenomeSpec:
    """Every weight and bias of ``spec``'s network (from the same initial values), plus ``sgd.lr``."""
    segments = [Segment(s.name, s.shape, s.init, s.transform, s.scale, True)
                for s in spec.segments if s.name.endswith((".weight", ".bias")) and s.name.startswith("layer")]
    segments += [s for s in spec.segments if s.name.startswith("features.")]          # frozen conv stack
    segments.append(Segment("sgd.lr", (1,), torch.tensor([math.log(lr)]), "exp", 1.0, True))
    return GenomeSpec(spec.model, tuple(segments))


def equal_lifetimes_steps(cfg: Config, generations: int | None = None) -> int:
    """OML meta-steps that live as many lifetimes as the evolution of ``cfg``: generations x popsize x
    episodes per genome, divided by the ``finetune.episodes`` lifetimes of one meta-step (rounded up)."""
    lived = (generations or cfg.search.generations) * cfg.search.popsize * cfg.evaluation.episodes
    return max(1, math.ceil(lived / cfg.finetune.episodes))


def oml_init(cfg: Config, ev: Evaluator, steps: int, lr: float = 0.03,
             start: Tensor | None = None) -> tuple[GenomeSpec, Tensor, GradientLearner]:
    """Meta-learn initial weights and the head's learning rate for online SGD of the output layer
    (OML, Javed & White 2019) by BPTT on meta-training episodes. Returns ``(spec, genome [D], learner)``."""
    return oml_train(cfg, ev, steps, lr, start)[:3]


def oml_train(cfg: Config, ev: Evaluator, steps: int, lr: float = 0.03, start: Tensor | None = None,
              seconds: float | None = None, progress=None) -> tuple[GenomeSpec, Tensor, GradientLearner, int]:
    """:func:`oml_init` with a budget: ``steps`` meta-steps, or (``seconds``) as many as fit in that much
    wall-clock time, at most ``steps``. ``progress(meta-steps done, meta-loss)`` is called after each one (a
    progress line). Returns ``(spec, genome [D], learner, meta-steps done)``."""
    spec = oml_spec(ev.spec, lr)
    learner = GradientLearner(spec.model, lr, layers=(spec.model.num_layers,))
    genome = spec.initial_vector().reshape(1, -1)
    if start is not None:   # start from another genome's initial weights (e.g. the evolved ones)
        values = ev.spec.decode(start.reshape(1, -1))
        genome = spec.encode({**spec.decode(genome), **{k: v for k, v in values.items() if k in spec.by_name}})
    trainer = MetaTrainer(cfg, spec, genome, ev.device, learner=learner)
    import time

    t0 = time.perf_counter()
    for _ in range(steps):
        if seconds is not None and time.perf_counter() - t0 >= seconds:
            break
        r = trainer.step()
        if progress is not None:
            progress(trainer.step_count, float(r.loss.mean()))
    return spec, trainer.current()[0], learner, trainer.step_count


@torch.no_grad()
def score_oml(ev: Evaluator, spec: GenomeSpec, genome: Tensor, learner: GradientLearner, episodes: Episodes,
              curve: bool = False):
    """Held-out scores of online SGD of the head from the OML initial weights."""
    return score_params(learner, spec.decode(genome.reshape(1, -1).to(ev.device)), episodes,
                        cap=ev.cfg.evaluation.loss_cap, curve=curve)


def add_oml(report: dict, ev: Evaluator, cfg: Config, steps: int, *, seconds: float | None = None, progress=None,
            meta_ev: Evaluator | None = None):
    """Meta-learn the OML baseline (``steps`` meta-steps of ``cfg``'s fine-tune protocol, or ``seconds`` of them)
    and add its held-out scores to ``report`` (a :func:`evoplast.science.report.report`, on ``ev``'s held-out
    episodes): ``oml``, ``oml_meta_steps``, ``oml_lifetimes``, ``curve_oml``, ``per_episode["oml"]`` and, for
    classification, ``oml_accuracy`` and ``per_episode_accuracy["oml"]``. ``meta_ev``: the evaluator whose
    training episodes OML meta-learns on (default ``ev``). Returns ``(oml parameters, its scores)``: the
    parameters score other episodes with :func:`score_oml`. Shared by ``scripts/evaluate.py`` and
    ``scripts/seeds.py``, so OML is the same baseline in both."""
    *oml, done = oml_train(cfg, meta_ev or ev, steps, seconds=seconds, progress=progress)
    held = ev.episodes(Purpose.HELDOUT, 0, ev.cfg.evaluation.heldout_episodes)
    o = score_oml(ev, *oml, held, curve=True)
    report["oml"] = o.loss.item()
    report["oml_meta_steps"] = float(done)
    report["oml_lifetimes"] = float(done * cfg.finetune.episodes)
    report["curve_oml"] = o.curve[0].tolist()
    report["per_episode"]["oml"] = o.per_episode[0].tolist()
    if o.accuracy is not None:
        report["oml_accuracy"] = o.accuracy.item()
        report["per_episode_accuracy"]["oml"] = o.accuracy_per_episode[0].tolist()
    return oml, o
