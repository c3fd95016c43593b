"""Reproducing Lindsey & Litwin-Kumar (2020) on the continual sinusoid stream, against OML and SGD.

The experiment of ``python scripts/reproduce.py`` (docs/reproduction.md), as pure functions:

* :func:`build_arms` — the meta-trained methods of one seed: the paper's FLP model (``configs/flp.yaml``:
  every layer plastic, Oja, per-synapse eta, learned feedback to every hidden layer, learned beta) trained
  by full BPTT (the authors' method) and by ES then BPTT; the output-only FLP model (the same network
  with only the output layer plastic) by BPTT; OML (the same trunk, meta-learned initial weights and head
  learning rate, online SGD of the head, frozen trunk) by BPTT.
* :func:`calibrate` — seconds per meta-step of each arm, measured in one process, interleaved
  (``rounds`` alternating rounds, the median per arm), so a loaded machine slows every arm alike.
* :func:`step_budgets` — a budget of meta-steps and the equal wall-clock budget it implies (the seconds
  the FLP-BPTT arm needs for those steps) converted into per-arm step counts.
* :func:`run_seed` — one seed: meta-train each arm to the largest step count it needs, snapshot it at each
  budget, score every snapshot on the shared held-out episodes (final MSE, the curve of MSE over the
  sinusoids seen so far, the paper's 40 x 32 stream), the tuned online-SGD baselines, and the paper's
  analyses (update-gradient cosine, forgetting) for FLP against OML.
* :func:`aggregate` / :func:`markdown` — means over seeds with 95% t-intervals and paired differences
  (:mod:`evoplast.science.stats`), as tables.

Every seed is scored on the same held-out episodes (seed 0's), so differences are paired per episode as
well as per seed; SGD's learning rate is chosen on separate validation episodes (also seed 0's).
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from .analysis import oml_spec, update_gradient_cosine
from ..config import Config
from ..evaluation import Evaluator, score_params
from ..genome import GenomeSpec
from ..learners import GradientLearner
from ..lifetime import expand_params, run_lifetime
from ..seeding import Purpose
from . import report
from .stats import format_interval, mean_ci, paired_ci
from ..tasks import Episodes, make_task
from ..trainers.bptt import BPTTTrainer, MetaTrainer
from ..trainers.es import ESTrainer

# arm key -> label in the tables
ARMS = {
    "flp_bptt": "FLP (all layers plastic), BPTT",
    "flp_es_bptt": "FLP (all layers plastic), ES then BPTT (lr 0.01)",
    "flp_output": "FLP, output layer plastic only, BPTT",
    "oml": "OML (meta-learned init + head lr, SGD of the head)",
}
BASELINES = {
    "sgd_same_init": "online SGD of the same weights, FLP-BPTT's initial weights (lr tuned)",
    "sgd_seed_init": "online SGD of the same weights, random initial weights (lr tuned)",
    "prototype_flp": "nearest class mean on FLP-BPTT's initial features (prototypes)",
    "prototype_oml": "nearest class mean on OML's initial features (prototypes)",
}
BUDGETS = ("equal_steps", "equal_time")
# The BPTT phase of ES then BPTT: from the ES center, finetune.lr = 0.03 diverges after the first (sign-like)
# Adam step in every seed tried (every later step skipped for a non-finite meta-loss); 0.01 stays finite.
HYBRID_BPTT_LR = 0.01
SGD_LRS = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)


def output_only(cfg: Config) -> Config:
    """The same model with only the output layer plastic (the output-only FLP model)."""
    return cfg.replace(**{"network.plastic_layers": [len(cfg.network.hidden) + 1]})


def for_seed(cfg: Config, seed: int) -> Config:
    return cfg.replace(seed=seed)


class OMLTrainer:
    """OML as a stepwise trainer (the meta-step of :func:`evoplast.science.analysis.oml_train`): BPTT on every
    weight and bias of ``cfg``'s network and the head's learning rate, the lifetime being online SGD of the
    output layer alone."""

    name = "oml"

    def __init__(self, cfg: Config, lr: float = 0.03, device: str = "cpu"):
        ev = Evaluator(cfg, device)
        self.spec = oml_spec(ev.spec, lr)
        self.learner = GradientLearner(self.spec.model, lr, layers=(self.spec.model.num_layers,))
        self.inner = MetaTrainer(cfg, self.spec, self.spec.initial_vector().reshape(1, -1), device,
                                 learner=self.learner)

    def step(self) -> dict[str, float]:
        r = self.inner.step()
        return {"meta_loss": float(r.loss.mean())}

    def best(self) -> Tensor:
        return self.inner.current()[0]


class HybridArm:
    """ES (``cfg.search``) for exactly ``es_generations`` generations, then BPTT from the ES center: each
    :meth:`step` is one generation or one BPTT meta-step (``phase`` says which)."""

    name = "hybrid"

    def __init__(self, cfg: Config, es_generations: int, bptt_lr: Optional[float] = HYBRID_BPTT_LR):
        self.cfg, self.es_generations, self.bptt_lr = cfg, es_generations, bptt_lr
        self.es = ESTrainer(cfg)
        self.bptt: Optional[BPTTTrainer] = None
        self.done = 0

    @property
    def phase(self) -> str:
        return "es" if self.done < self.es_generations else "bptt"

    def step(self) -> dict[str, float]:
        if self.phase == "es":
            m = self.es.step()
        else:
            if self.bptt is None:
                self.bptt = BPTTTrainer(self.cfg, self.es.best(), lr=self.bptt_lr)
            m = self.bptt.step()
        self.done += 1
        return m

    def best(self) -> Tensor:
        return self.es.best() if self.bptt is None else self.bptt.best()


@dataclass
class Arm:
    """A meta-trained method: its trainer (``step()``, ``best() -> [D]``), the genome spec ``best()`` is in,
    and the learner that lives the lifetime with the decoded genome."""

    key: str
    trainer: Any
    spec: GenomeSpec
    learner: Any


def build_arms(cfg: Config, es_generations: int = 1, keys=tuple(ARMS)) -> dict[str, Arm]:
    """The meta-trained arms for ``cfg`` (its seed), fresh: see :data:`ARMS`."""
    arms: dict[str, Arm] = {}
    for key in keys:
        if key == "flp_bptt":
            t = BPTTTrainer(cfg)
            arms[key] = Arm(key, t, t.spec, Evaluator(cfg, spec=t.spec).learner)
        elif key == "flp_es_bptt":
            t = HybridArm(cfg, es_generations)
            ev = Evaluator(cfg)
            arms[key] = Arm(key, t, ev.spec, ev.learner)
        elif key == "flp_output":
            c = output_only(cfg)
            t = BPTTTrainer(c)
            arms[key] = Arm(key, t, t.spec, Evaluator(c, spec=t.spec).learner)
        elif key == "oml":
            t = OMLTrainer(cfg)
            arms[key] = Arm(key, t, t.spec, t.learner)
        else:
            raise ValueError(f"unknown arm {key!r}: expected one of {', '.join(ARMS)}")
    return arms


def calibrate(cfg: Config, rounds: int = 5, keys=tuple(ARMS),
              clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Median seconds of one meta-step of each arm, timed in this process in ``rounds`` interleaved rounds
    (arm after arm, round after round) after one warm-up step each. ``es`` is one ES generation (the ES
    phase of the hybrid; its BPTT phase costs what ``flp_bptt`` costs). Returns ``{key: seconds}``."""
    arms = {k: v.trainer for k, v in build_arms(cfg, 0, [k for k in keys if k != "flp_es_bptt"]).items()}
    if "flp_es_bptt" in keys:
        arms["es"] = ESTrainer(cfg)
    for t in arms.values():
        t.step()                                      # warm-up (kernel compilation, allocator)
    times: dict[str, list[float]] = {k: [] for k in arms}
    for _ in range(rounds):
        for k, t in arms.items():
            t0 = clock()
            t.step()
            times[k].append(clock() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def step_budgets(seconds_per_step: dict[str, float], meta_steps: int, es_share: float = 0.125,
                 keys=tuple(ARMS)) -> dict[str, dict[str, dict[str, int]]]:
    """Per arm and budget, the meta-steps to run: ``{arm: {budget: {"es": G, "bptt": n}}}``.

    ``equal_steps``: ``meta_steps`` for every arm (the hybrid: G ES generations + ``meta_steps - G`` BPTT
    steps). ``equal_time``: the seconds FLP-BPTT needs for ``meta_steps`` steps, ``B = meta_steps x
    seconds_per_step["flp_bptt"]``, divided by each arm's seconds per step (rounded down, at least 1). The
    hybrid spends the share ``es_share`` of B on ES (G = that many seconds of generations, the same G in
    both budgets) and the rest on BPTT.
    """
    t_ref = seconds_per_step["flp_bptt"]
    seconds = meta_steps * t_ref
    out: dict[str, dict[str, dict[str, int]]] = {}
    for key in keys:
        if key == "flp_es_bptt":
            g = min(meta_steps - 1, max(1, round(es_share * seconds / seconds_per_step["es"])))
            rest = max(1, math.floor((seconds - g * seconds_per_step["es"]) / t_ref))
            out[key] = {"equal_steps": {"es": g, "bptt": meta_steps - g}, "equal_time": {"es": g, "bptt": rest}}
        else:
            n = meta_steps if key == "flp_bptt" else max(1, math.floor(seconds / seconds_per_step[key]))
            out[key] = {"equal_steps": {"es": 0, "bptt": meta_steps}, "equal_time": {"es": 0, "bptt": n}}
    return out


def shared_episodes(cfg: Config, purpose: Purpose = Purpose.HELDOUT, num: Optional[int] = None,
                    longer: int = 1, wider: int = 1, order: Optional[str] = None) -> Episodes:
    """Seed 0's held-out (or validation) episodes of ``cfg``'s task, optionally on a ``longer`` x ``wider``
    stream (the paper's 40 x 32 from 10 x 8: 4, 4): the same episodes for every seed and arm."""
    t = cfg.task
    task = make_task(t.replace(batches_per_task=t.batches_per_task * longer, batch_size=t.batch_size * wider))
    return task.episodes(0, purpose, 0, num or cfg.evaluation.heldout_episodes, "cpu", order=order)


def score_arm(arm: Arm, genome: Tensor, episodes: Episodes, cap: float, curve: bool = False):
    """Held-out :class:`~evoplast.evaluation.Scores` of ``genome [D]`` (in ``arm.spec``) on ``episodes``."""
    return score_params(arm.learner, arm.spec.decode(genome.reshape(1, -1)), episodes, cap=cap, curve=curve)


def tuned_sgd(ev: Evaluator, genome: Tensor, heldout: Episodes, validation: Episodes, lrs=SGD_LRS,
              curve: bool = False):
    """Online SGD of exactly the plastic weights of ``ev``'s model from the initial weights of ``genome``,
    its rate the best of ``lrs`` on ``validation`` (then refined by 2^±1/2, 2^±1). Returns (scores, lr)."""
    learner = report.sgd_learner(ev, plastic_only=True)
    cap = ev.cfg.evaluation.loss_cap

    def val(rates):
        g = genome.reshape(1, -1).expand(len(rates), -1)
        return score_params(learner, ev.decode(g) | {"sgd.lr": torch.tensor(rates)}, validation, cap=cap).loss

    rates = list(lrs)
    losses = val(rates)
    coarse = rates[int(losses.argmin())]
    fine = [coarse * 2 ** e for e in (-1.0, -0.5, 0.5, 1.0)]
    rates, losses = rates + fine, torch.cat([losses, val(fine)])
    best = rates[int(losses.argmin())]
    held = score_params(learner, ev.decode(genome.reshape(1, -1)) | {"sgd.lr": torch.tensor([best])}, heldout,
                        cap=cap, curve=curve)
    return held, best


@torch.no_grad()
def forgetting(arm: Arm, genome: Tensor, episodes: Episodes) -> dict[str, Any]:
    """The forgetting matrix (query MSE on sinusoid i, column, after the block of sinusoid j, row; mean over
    episodes) and two summaries: ``first`` (sinusoid 1's MSE right after its block and at the end) and
    ``mean_forgetting`` (mean over sinusoids 1..n-1 of end MSE minus MSE right after its own block)."""
    params = expand_params(arm.spec.decode(genome.reshape(1, -1)), episodes.num_episodes)
    out = run_lifetime(arm.learner, params, episodes, 1, curve=True)
    m = out.curve.mean(0)                                                                 # [C, n]
    n = min(m.shape)
    diag = torch.stack([m[i, i] for i in range(n)])
    res = {"matrix": m.tolist(), "first_after": float(m[0, 0]), "first_end": float(m[-1, 0]),
           "mean_forgetting": float((m[-1, :n - 1] - diag[:n - 1]).mean())}
    if out.curve_acc is not None:     # classification: the same in accuracy (forgetting = accuracy lost)
        a = out.curve_acc.mean(0)
        res |= {"accuracy_matrix": a.tolist(), "first_after_acc": float(a[0, 0]), "first_end_acc": float(a[-1, 0])}
    return res


def skipped(trainer) -> int:
    """Meta-steps a BPTT trainer skipped so far for a non-finite meta-loss or gradient (a diverged episode)."""
    inner = getattr(trainer, "bptt", None) or trainer
    inner = getattr(inner, "inner", None)
    return int(getattr(inner, "skipped", 0))


def run_seed(cfg: Config, seed: int, budgets: dict[str, dict[str, dict[str, int]]], *,
             paper_stream: bool = True, analyses: bool = True, log: Callable[[str], None] = lambda s: None,
             ) -> dict[str, Any]:
    """One seed of the experiment. Meta-trains each arm of ``budgets`` (from :func:`step_budgets`) to the
    largest step count it needs, snapshots ``best()`` at each budget, and scores every snapshot.

    Returns ``{"seed", "arms": {arm: {budget: {"loss", "per_episode" [K], "curve" [C], "steps", "es",
    "seconds", "paper_loss"?, "paper_per_episode"?}}}, "baselines": {name: {...}}, "analyses": {...}}``.
    """
    torch.manual_seed(seed)
    c = for_seed(cfg, seed)
    classification = make_task(cfg.task).kind == "classification"
    paper_stream = paper_stream and not classification        # the 40 x 32 stream is the regression one
    cap = cfg.evaluation.loss_cap
    heldout = shared_episodes(cfg)
    validation = shared_episodes(cfg, Purpose.VALIDATION)
    paper = shared_episodes(cfg, longer=4, wider=4) if paper_stream else None
    paper_val = shared_episodes(cfg, Purpose.VALIDATION, longer=4, wider=4) if paper_stream else None
    g_es = budgets.get("flp_es_bptt", {}).get("equal_steps", {}).get("es", 1)
    arms = build_arms(c, g_es, tuple(budgets))
    out: dict[str, Any] = {"seed": seed, "arms": {}, "baselines": {}, "analyses": {}}
    finals: dict[str, Tensor] = {}
    for key, arm in arms.items():
        wanted = {name: b["es"] + b["bptt"] for name, b in budgets[key].items()}
        total = max(wanted.values())
        snaps: dict[int, tuple[Tensor, float, float, int]] = {}
        elapsed, es_seconds, step = 0.0, 0.0, 0
        while step < total:
            t0 = time.perf_counter()
            arm.trainer.step()
            dt = time.perf_counter() - t0
            elapsed += dt
            if key == "flp_es_bptt" and step < g_es:
                es_seconds += dt
            step += 1
            if step in wanted.values():
                snaps[step] = (arm.trainer.best().clone(), elapsed, es_seconds, skipped(arm.trainer))
        out["arms"][key] = {}
        for name, n in wanted.items():
            genome, secs, es_secs, skip = snaps[n]
            s = score_arm(arm, genome, heldout, cap, curve=True)
            row = {"loss": float(s.loss[0]), "per_episode": s.per_episode[0].tolist(), "curve": s.curve[0].tolist(),
                   "steps": n, "es": budgets[key][name]["es"], "seconds": secs, "es_seconds": es_secs,
                   "nonfinite": float(s.nonfinite_episodes[0].float().mean()),
                   "skipped": skip}
            if s.accuracy is not None:
                row |= {"accuracy": float(s.accuracy[0]), "per_episode_accuracy": s.accuracy_per_episode[0].tolist()}
            if paper is not None:
                p = score_arm(arm, genome, paper, cap)
                row |= {"paper_loss": float(p.loss[0]), "paper_per_episode": p.per_episode[0].tolist(),
                        "paper_nonfinite": float(p.nonfinite_episodes[0].float().mean())}
            out["arms"][key][name] = row
            if name == "equal_steps":
                finals[key] = genome
        log(f"seed {seed} {key}: " + ", ".join(f"{b} {r['steps']} steps {r['seconds']:.0f}s MSE {r['loss']:.3f}"
                                             for b, r in out["arms"][key].items()))
    # the same-parameter SGD baselines (every layer's weights, no biases), rate tuned on validation episodes
    ev = Evaluator(c)
    if "flp_bptt" in finals:
        for name, genome in (("sgd_same_init", finals["flp_bptt"]), ("sgd_seed_init", ev.spec.initial_vector())):
            s, lr = tuned_sgd(ev, genome, heldout, validation, curve=True)
            row = {"loss": float(s.loss[0]), "per_episode": s.per_episode[0].tolist(), "curve": s.curve[0].tolist(),
                   "lr": lr, "nonfinite": float(s.nonfinite_episodes[0].float().mean())}
            if s.accuracy is not None:
                row |= {"accuracy": float(s.accuracy[0]), "per_episode_accuracy": s.accuracy_per_episode[0].tolist()}
            if paper is not None:
                p, plr = tuned_sgd(ev, genome, paper, paper_val)
                row |= {"paper_loss": float(p.loss[0]), "paper_per_episode": p.per_episode[0].tolist(), "paper_lr": plr}
            out["baselines"][name] = row
        if classification:   # nearest class mean on the features the output layer reads at the initial weights
            for name, key in (("prototype_flp", "flp_bptt"), ("prototype_oml", "oml")):
                if key in finals:
                    acc = report.prototype(Evaluator(c, spec=arms[key].spec), finals[key], heldout)          # [K]
                    out["baselines"][name] = {"accuracy": float(acc.mean()), "per_episode_accuracy": acc.tolist()}
        log(f"seed {seed} baselines: " + ", ".join(
            f"{k} " + (f"MSE/CE {v['loss']:.3f} (lr {v['lr']:.3g})" if "loss" in v else "") +
            (f" accuracy {v['accuracy']:.3f}" if "accuracy" in v else "") for k, v in out["baselines"].items()))
    if analyses:
        few = shared_episodes(cfg, num=8)
        for key in ("flp_bptt", "flp_es_bptt", "flp_output", "oml"):
            if key not in finals:
                continue
            a = {"forgetting": forgetting(arms[key], finals[key], few)}
            if key != "oml":
                ev_k = Evaluator(output_only(c) if key == "flp_output" else c, spec=arms[key].spec)
                cos = update_gradient_cosine(ev_k, finals[key], few)                      # [T, plastic layers]
                a["cosine_per_layer"] = cos.mean(0).tolist()
                a["cosine_mean"] = float(cos.mean())
            else:
                a["cosine_mean"] = 1.0     # OML's update is the head's SGD step: cosine 1 by construction
            out["analyses"][key] = a
    return out


def calibrate_and_budget(cfg: Config, meta_steps: int, rounds: int = 5, es_share: float = 0.125,
                         keys=tuple(ARMS)) -> dict[str, Any]:
    """:func:`calibrate` then :func:`step_budgets`: ``{"seconds_per_step", "budget_seconds", "budgets"}``."""
    sec = calibrate(cfg, rounds, keys)
    return {"seconds_per_step": sec, "budget_seconds": meta_steps * sec["flp_bptt"],
            "budgets": step_budgets(sec, meta_steps, es_share, keys)}


def run(cfg: Config, seeds, meta_steps: int, *, rounds: int = 5, es_share: float = 0.125, keys=tuple(ARMS),
        paper_stream: bool = True, analyses: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The whole experiment: calibrate (once, on ``cfg``'s seed), then :func:`run_seed` for each seed, then
    :func:`aggregate`. Returns ``{"calibration", "seeds": [...], "aggregate", "seconds"}``."""
    t0 = time.perf_counter()
    cal = calibrate_and_budget(cfg, meta_steps, rounds, es_share, keys)
    log("seconds per meta-step (median of interleaved rounds): " +
        ", ".join(f"{k} {v:.3f}" for k, v in cal["seconds_per_step"].items()))
    log(f"equal wall-clock budget: {cal['budget_seconds']:.1f} s; steps: {cal['budgets']}")
    per_seed = [run_seed(cfg, s, cal["budgets"], paper_stream=paper_stream, analyses=analyses, log=log)
                for s in seeds]
    return {"calibration": cal, "seeds": per_seed, "aggregate": aggregate(per_seed),
            "seconds": time.perf_counter() - t0, "meta_steps": meta_steps}


def _paired(a_rows, b_rows, key="per_episode"):
    """Paired differences a - b: per seed (each seed's mean) and per episode (the seeds' mean on each)."""
    a = torch.tensor([r[key] for r in a_rows], dtype=torch.float64)      # [S, K]
    b = torch.tensor([r[key] for r in b_rows], dtype=torch.float64)
    return paired_ci(a.mean(1), b.mean(1)), paired_ci(a.mean(0), b.mean(0))


def _row(rs, ref, paired: bool) -> dict[str, Any]:
    """The aggregated fields every row has (loss, accuracy, the paper stream) and their paired differences."""
    row: dict[str, Any] = {}
    for field, per, out in (("loss", "per_episode", "diff"), ("accuracy", "per_episode_accuracy", "diff_acc"),
                            ("paper_loss", "paper_per_episode", "paper_diff")):
        if field not in rs[0]:
            continue
        row[field] = mean_ci([r[field] for r in rs])
        if paired:
            row[f"{out}_seed"], row[f"{out}_episode"] = _paired(ref, rs, per)
    return row


def aggregate(per_seed: list[dict[str, Any]], reference: str = "flp_bptt") -> dict[str, Any]:
    """Means over seeds (95% t-intervals), paired differences ``reference - other`` (per seed and per
    episode; MSE, so negative = the reference is better; accuracy, positive = the reference is better), the
    mean curve with intervals, and the analyses."""
    agg: dict[str, Any] = {"rows": {}, "curves": {}, "analyses": {}}
    arms = list(per_seed[0]["arms"])
    for budget in BUDGETS:
        rows = {}
        ref = [s["arms"][reference][budget] for s in per_seed] if reference in arms else None
        for key in arms:
            rs = [s["arms"][key][budget] for s in per_seed]
            row = {"steps": [r["steps"] for r in rs], "es": rs[0]["es"], "seconds": mean_ci([r["seconds"] for r in rs]),
                   "nonfinite": max(r["nonfinite"] for r in rs), "skipped": [r["skipped"] for r in rs]}
            row |= _row(rs, ref, key != reference and ref is not None)
            if "paper_nonfinite" in rs[0]:
                row["paper_nonfinite"] = max(r["paper_nonfinite"] for r in rs)
            rows[key] = row
        for name in per_seed[0]["baselines"]:
            rs = [s["baselines"][name] for s in per_seed]
            row = {"lr": [r["lr"] for r in rs] if "lr" in rs[0] else None,
                   "nonfinite": max(r.get("nonfinite", 0.0) for r in rs)}
            rows[name] = row | _row(rs, ref, ref is not None)
        agg["rows"][budget] = rows
        curves = {k: [s["arms"][k][budget]["curve"] for s in per_seed] for k in arms}
        curves |= {k: [s["baselines"][k]["curve"] for s in per_seed] for k in per_seed[0]["baselines"]
                   if "curve" in per_seed[0]["baselines"][k]}
        agg["curves"][budget] = {k: [mean_ci([c[i] for c in v]) for i in range(len(v[0]))] for k, v in curves.items()}
    for key in per_seed[0]["analyses"]:
        a = [s["analyses"][key] for s in per_seed]
        agg["analyses"][key] = {
            "cosine": mean_ci([x["cosine_mean"] for x in a]),
            "cosine_per_layer": [mean_ci([x["cosine_per_layer"][i] for x in a])
                                 for i in range(len(a[0].get("cosine_per_layer", [])))],
            "first_after": mean_ci([x["forgetting"]["first_after"] for x in a]),
            "first_end": mean_ci([x["forgetting"]["first_end"] for x in a]),
            "mean_forgetting": mean_ci([x["forgetting"]["mean_forgetting"] for x in a]),
        }
        if "first_after_acc" in a[0]["forgetting"]:
            agg["analyses"][key] |= {f: mean_ci([x["forgetting"][f] for x in a])
                                     for f in ("first_after_acc", "first_end_acc")}
    return agg


def _fmt(i) -> str:
    return "" if i is None else format_interval(i) + (" *" if i.excludes_zero() else "")


def diverged_seeds(per_seed: list[dict[str, Any]]) -> list[int]:
    """Seeds in which some meta-trained arm diverged in every held-out episode (its MSE is the cap)."""
    return [s["seed"] for s in per_seed
            if any(row["nonfinite"] >= 1.0 for arm in s["arms"].values() for row in arm.values())]


def markdown(result: dict[str, Any], title: str = "", brief: bool = False) -> str:
    """The tables of :func:`run`'s result, as markdown; when some seed diverged, the tables again without it
    (``brief``: the final-loss tables only)."""
    agg, cal = result["aggregate"], result["calibration"]
    n = len(result["seeds"])
    lines = [f"{'####' if brief else '###'} {title}" if title else "", "",
             f"{n} seeds ({', '.join(str(s['seed']) for s in result['seeds'])}); held-out query MSE (accuracy for "
             f"classification) on the same "
             f"{len(result['seeds'][0]['arms']['flp_bptt']['equal_steps']['per_episode'])} episodes for every seed; "
             "mean ± 95% t-interval over seeds; FLP-BPTT − row paired per seed and per episode (`*`: excludes 0; "
             "MSE: negative = FLP-BPTT better; accuracy: positive = FLP-BPTT better).", "",
             "Seconds per meta-step, median of interleaved rounds in one process: " +
             ", ".join(f"{k} {v:.3f}" for k, v in cal["seconds_per_step"].items()) +
             f"; equal wall-clock budget {cal['budget_seconds']:.1f} s (= FLP-BPTT's {result['meta_steps']} steps).",
             ""]
    labels = ARMS | BASELINES
    classification = "accuracy" in next(iter(agg["rows"]["equal_steps"].values()))
    for budget in BUDGETS:
        rows = agg["rows"][budget]
        lines += [f"**{'equal meta-steps' if budget == 'equal_steps' else 'equal wall-clock'}**", ""]
        if classification:
            lines += ["| method | meta-steps | seconds used | accuracy | FLP-BPTT − row, per seed | per episode | "
                      "query cross-entropy |", "|---|---|---|---|---|---|---|"]
        else:
            lines += ["| method | meta-steps (ES gens + BPTT) | seconds used | final MSE | FLP-BPTT − row, per seed | "
                      "per episode | paper's 40 × 32 stream | FLP-BPTT − row there, per seed |",
                      "|---|---|---|---|---|---|---|---|"]
        for key, r in rows.items():
            if "steps" in r:
                st = f"{r['es']} + {r['steps'][0] - r['es']}" if r["es"] else f"{r['steps'][0]}"
                if any(r["skipped"]):
                    st += " (skipped per seed: " + "/".join(map(str, r["skipped"])) + ")"
                secs = format_interval(r["seconds"], 1)
            elif r.get("lr"):
                st, secs = "none (lr " + "/".join(f"{x:.3g}" for x in r["lr"]) + ")", ""
            else:
                st, secs = "none", ""
            nf = f" (worst seed: {r['nonfinite']:.0%} of episodes non-finite)" if r.get("nonfinite") else ""
            pnf = f" (worst seed: {r['paper_nonfinite']:.0%} non-finite)" if r.get("paper_nonfinite") else ""
            if classification:
                lines.append(f"| {labels[key]} | {st} | {secs} | {format_interval(r['accuracy'])} | "
                             f"{_fmt(r.get('diff_acc_seed'))} | {_fmt(r.get('diff_acc_episode'))} | "
                             f"{format_interval(r['loss']) + nf if 'loss' in r else ''} |")
            else:
                lines.append(f"| {labels[key]} | {st} | {secs} | {format_interval(r['loss'])}{nf} | "
                             f"{_fmt(r.get('diff_seed'))} | {_fmt(r.get('diff_episode'))} | "
                             f"{format_interval(r['paper_loss']) + pnf if 'paper_loss' in r else ''} | "
                             f"{_fmt(r.get('paper_diff_seed'))} |")
        lines.append("")
        if brief:
            continue
        curves = agg["curves"][budget]
        c = len(next(iter(curves.values())))
        what = "cross-entropy over the classes seen so far, after class" if classification else \
            "MSE over the sinusoids seen so far, after sinusoid"
        lines += [f"{what} 1 … {c} (mean over seeds):", "",
                  "| method | " + " | ".join(str(i + 1) for i in range(c)) + " |", "|---" * (c + 1) + "|"]
        for key, pts in curves.items():
            lines.append(f"| {labels[key]} | " + " | ".join(f"{p.mean:.2f}" for p in pts) + " |")
        lines.append("")
    if agg["analyses"] and not brief:
        lines += ["**The paper's analyses** (equal meta-steps snapshot, 8 held-out episodes): mean cosine between "
                  "the lifetime update and the negative gradient of the step's loss (per plastic layer, input "
                  "first), and forgetting (task 1's query loss right after its block and after the whole stream; "
                  "mean over tasks 1 … n−1 of end loss − loss right after its own block).", "",
                  "| method | update–gradient cosine | per layer | task 1 after its block | at the end | "
                  "mean forgetting |", "|---|---|---|---|---|---|"]
        for key, a in agg["analyses"].items():
            per = ", ".join(f"{x.mean:.2f}" for x in a["cosine_per_layer"]) or "1 (SGD of the head)"
            acc = (f" (accuracy {format_interval(a['first_after_acc'])} → {format_interval(a['first_end_acc'])})"
                   if "first_after_acc" in a else "")
            lines.append(f"| {ARMS[key]} | {format_interval(a['cosine'])} | {per} | {format_interval(a['first_after'])} "
                         f"| {format_interval(a['first_end'])}{acc} | {format_interval(a['mean_forgetting'])} |")
        lines.append("")
    if brief:
        return "\n".join(lines)
    lines.append(f"Whole table: {result['seconds']:.0f} s of wall-clock (one process, one thread).")
    bad = diverged_seeds(result["seeds"])
    kept = [s for s in result["seeds"] if s["seed"] not in bad]
    if bad and len(kept) >= 2:
        lines += ["", markdown(result | {"seeds": kept, "aggregate": aggregate(kept)},
                               f"The same without seed(s) {', '.join(map(str, bad))} (an FLP arm diverged in every "
                               "episode there)", brief=True)]
    return "\n".join(lines)


def to_json(result: dict[str, Any]) -> dict[str, Any]:
    """``result`` with every :class:`~evoplast.science.stats.Interval` as ``[mean, half_width, n]`` (for json)."""
    from .stats import Interval

    def conv(x):
        if isinstance(x, Interval):
            return [x.mean, x.half_width, x.n]
        if isinstance(x, dict):
            return {k: conv(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [conv(v) for v in x]
        return x

    return conv(result)
