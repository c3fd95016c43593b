"""Which pipeline should ``scripts/evolve.py`` run? Candidates against BPTT from scratch at equal CPU time.

The experiment of issue 29, item 1. For every seed:

1. the **default pipeline** runs as ``scripts/evolve.py`` trains: ``search.generations`` generations of
   ``cfg.search`` (PGPE), then ``finetune.after_evolution_steps`` full-BPTT steps from the search center
   (:class:`~evoplast.trainers.hybrid.HybridTrainer`). Its CPU seconds of training steps are that seed's
   budget ``b``;
2. **BPTT from scratch** (the spec's initial genome, ``finetune.lr``) runs for ``b`` CPU seconds; on the
   way (clock paused) its held-out MSE after as many steps as the default's BPTT phase is recorded: the
   **ablation**, the same BPTT from the seed's initial genome instead of from ES's center (what the ES
   phase buys);
3. every other candidate runs for ``b`` CPU seconds.

The clock is CPU seconds of this process (``time.process_time``), which with one thread equals
wall-clock on an idle core and does not depend on what else a shared machine runs (the convention of
:mod:`evoplast.bench.compare`). Only training steps are timed: held-out evaluations, the selection
among top-k genomes, and what ``evolve.py`` adds around training (baselines, reports, MLflow) are not.
Every method is scored on the seed's held-out episodes (``Purpose.HELDOUT``), which no method trains
on; comparisons are paired over seeds (same seed: same initial genome, same held-out episodes, same
BPTT episode stream).

Candidates (:func:`candidates`):

* ``ES 1/16 then BPTT``: the hybrid with another split (ES for 1/16 of the budget);
* ``subspace ES + BPTT``: every step, one full-BPTT step on the weights (initial weights and biases), and
  one antithetic ES step on the small subspace of the rule, feedback and feedback strength β
  (:class:`SubspaceTrainer`);
* ``ES then BPTT on top-k``: the default's ES phase, then BPTT on the search center and the k − 1 best
  genomes of the last population together (one batched lifetime per meta-step, ``[k, D]``); the genome
  kept is the best on validation episodes (:class:`TopKTrainer`).

Measured on the default config (8 seeds, docs/outer-trainers.md): no candidate beats BPTT from scratch; the
default ties it (:data:`MEASURED`, which ``scripts/evolve.py`` prints).
"""

from __future__ import annotations

import fnmatch
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Optional

import torch
from torch import Tensor

from ..config import Config
from ..evaluation import Evaluator
from ..seeding import Purpose, generator
from ..science.stats import Interval, format_interval, mean_ci, paired_ci
from ..trainers.bptt import BPTTTrainer
from .compare import regime_config, with_overrides
from ..trainers.es import ESTrainer
from ..trainers.hybrid import HybridTrainer

# What the verdict measured for the default config (docs/outer-trainers.md, "The default pipeline, decided by
# measurement"): default − BPTT from scratch, held-out MSE, paired over seeds; scripts/evolve.py prints it.
MEASURED = {"diff": 0.001, "half_width": 0.147, "seeds": 8}
DOCS = "docs/outer-trainers.md#the-default-pipeline-decided-by-measurement"

DEFAULT = "default (ES then BPTT)"
BPTT = "BPTT from scratch"
ABLATION = "ablation: BPTT from the initial genome, the default's BPTT steps"

# the segments ES owns in the subspace candidate: rule coefficients, feedback, feedback strength
SUBSPACE = ("*.eta", "*.beta", "*.feedback", "*.feedback_bias", "*.rule.*", "*.A", "*.B", "*.C", "*.D", "*.theta")
_SUBSPACE_STREAM = 1 << 41          # index offset of the subspace ES's noise within Purpose.SEARCH


def measured_line() -> str:
    """The one line ``scripts/evolve.py`` ends its summary with: what the verdict found, plainly."""
    d, h, n = MEASURED["diff"], MEASURED["half_width"], MEASURED["seeds"]
    better = d + h < 0
    verdict = ("beat BPTT from scratch" if better else
               "did not beat BPTT from scratch" if d - h < 0 else "lost to BPTT from scratch")
    return (f"Measured on the default config: this pipeline (ES, then BPTT) {verdict} at equal CPU time "
            f"(held-out MSE, pipeline − BPTT = {d:+.3f} ± {h:.3f}, {n} seeds, paired 95% CI; {DOCS})")


def subspace_index(spec, patterns: Iterable[str] = SUBSPACE) -> Tensor:
    """``[d]`` positions in the flat genome of the evolved segments whose names match ``patterns``."""
    idx, offset = [], 0
    for s in spec.evolved:
        if any(fnmatch.fnmatch(s.name, p) for p in patterns):
            idx.extend(range(offset, offset + s.numel))
        offset += s.numel
    return torch.tensor(idx, dtype=torch.long)


class SubspaceTrainer:
    """BPTT on the weights, ES on the rule / feedback / β subspace, one step of each per :meth:`step`.

    BPTT (Adam, ``lr``) sees a gradient that is zero on the subspace (a hook on the genome), so Adam leaves
    those numbers alone; ES perturbs only the subspace (``pairs`` antithetic pairs, ``sigma``), scores the
    ``2·pairs`` genomes on the generation's training episodes (common random numbers: every member lives
    the same episodes) and moves the subspace by Adam (``es_lr``) with the estimate
    ``mean_i (L(θ+ε_i) − L(θ−ε_i)) ε_i / (2σ)``.
    """

    name = "subspace"

    def __init__(self, cfg: Config, genome: Optional[Tensor] = None, *, lr: Optional[float] = None,
                 pairs: int = 8, sigma: float = 0.1, es_lr: float = 0.02):
        self.cfg = cfg
        self.ev = Evaluator(cfg)
        self.bptt = BPTTTrainer(cfg, genome, lr=lr)
        self.idx = subspace_index(self.bptt.spec)                              # [d]
        if self.idx.numel() == 0:
            raise ValueError("the genome has no rule / feedback segment for ES to own")
        mask = torch.ones(self.bptt.spec.dim)
        mask[self.idx] = 0.0
        self.bptt.inner.genomes.register_hook(lambda g: g * mask)
        self.pairs, self.sigma = pairs, sigma
        self.sub = self.bptt.inner.genomes.detach()[0, self.idx].clone().requires_grad_(True)   # [d]
        self.es_optimizer = torch.optim.Adam([self.sub], lr=es_lr)
        self.es_steps = 0

    def step(self) -> dict[str, float]:
        t0 = time.perf_counter()
        m = self.bptt.step()
        base = self.bptt.inner.genomes.detach()[0]                              # [D]
        gen = generator(self.cfg.seed, Purpose.SEARCH, _SUBSPACE_STREAM + self.es_steps)
        eps = torch.randn(self.pairs, self.idx.numel(), generator=gen) * self.sigma   # [pairs, d]
        pop = base.expand(2 * self.pairs, -1).clone()                           # [2*pairs, D]
        pop[:, self.idx] = self.sub.detach() + torch.cat([eps, -eps])
        fitness, _ = self.ev.fitness(pop, _SUBSPACE_STREAM + self.es_steps)     # [2*pairs]
        loss = -fitness
        grad = ((loss[:self.pairs] - loss[self.pairs:]).unsqueeze(-1) * eps).mean(0) / (2 * self.sigma ** 2)
        if torch.isfinite(grad).all():
            self.es_optimizer.zero_grad(set_to_none=True)
            self.sub.grad = grad
            self.es_optimizer.step()
        with torch.no_grad():
            self.bptt.inner.genomes[0, self.idx] = self.sub.detach()
        self.es_steps += 1
        return {**m, "es_loss": float(loss.mean()), "seconds": time.perf_counter() - t0}

    def best(self) -> Tensor:
        return self.bptt.best()


class TopKTrainer:
    """ES for ``es_generations`` generations, then BPTT on ``[k, D]``: the search center and the ``k − 1``
    best genomes of the last population, side by side (each its own Adam state). :meth:`best` is the one
    of the k with the lowest loss on validation episodes (``Purpose.VALIDATION``, never the held-out ones)."""

    name = "topk"

    def __init__(self, cfg: Config, genome: Optional[Tensor] = None, *, es_generations: int, k: int = 4,
                 lr: Optional[float] = None):
        self.cfg, self.k, self.lr = cfg, k, lr
        self.es = ESTrainer(cfg, genome)
        self.es_generations = es_generations
        self.bptt: Optional[BPTTTrainer] = None
        self.ev = Evaluator(cfg)

    def step(self) -> dict[str, float]:
        if self.bptt is None and self.es.generation >= self.es_generations:
            pop, _ = self.es.population()                                 # [P, D], best first
            start = torch.cat([self.es.best().reshape(1, -1), pop[:self.k - 1]])  # [k, D]
            self.bptt = BPTTTrainer(self.cfg, start, lr=self.lr)
        return self.es.step() if self.bptt is None else self.bptt.step()

    def best(self) -> Tensor:
        if self.bptt is None:
            return self.es.best()
        genomes = self.bptt.current()                                           # [k, D]
        val = self.ev.episodes(Purpose.VALIDATION, 2, self.cfg.evaluation.heldout_episodes)
        losses = self.ev.score(genomes, episodes=val).loss                      # [k]
        return genomes[int(torch.argmin(losses))]


@dataclass
class Candidate:
    name: str
    note: str
    build: Callable[[Config, float], Any]        # (cfg, budget in CPU s) -> a trainer (step(), best())


def candidates(cfg: Config) -> dict[str, Candidate]:
    """The pipelines compared with BPTT from scratch, besides the default itself."""
    lr = cfg.finetune.lr
    G = cfg.search.generations
    return {c.name: c for c in (
        Candidate("ES 1/16 then BPTT", "hybrid, ES for 1/16 of the budget (P = 32), then full BPTT",
                  lambda c, b: HybridTrainer(c, es_seconds=b / 16, lr=lr)),
        Candidate("subspace ES + BPTT", "each step: BPTT on the weights, antithetic ES (8 pairs, Adam 0.02) on "
                  "rule, feedback, beta", lambda c, b: SubspaceTrainer(c, lr=lr)),
        Candidate("ES then BPTT on top-4", f"ES {G} generations, then BPTT on the center + 3 best of the last "
                  "population [4, D], kept by validation", lambda c, b: TopKTrainer(c, es_generations=G, k=4, lr=lr)),
    )}


@dataclass
class PipelineRun:
    method: str
    seed: int
    steps: int
    seconds: float                   # CPU seconds of training steps
    loss: float                      # held-out query MSE of best() at the end
    episode_gain: float
    marks: dict[str, float] = field(default_factory=dict)    # other held-out numbers recorded on the way


def _run(trainer, ev: Evaluator, *, budget: Optional[float] = None, steps: Optional[int] = None,
         mark_at: dict[int, str] | None = None, clock: Callable[[], float] = time.process_time):
    """Step ``trainer`` until ``steps`` steps or ``budget`` CPU seconds; returns ``(steps, seconds, marks)``,
    with the held-out loss of ``best()`` after the step counts of ``mark_at`` (clock paused)."""
    elapsed, n, marks = 0.0, 0, {}
    mark_at = dict(mark_at or {})
    while (steps is None or n < steps) and (budget is None or elapsed < budget):
        t0 = clock()
        trainer.step()
        elapsed += clock() - t0
        n += 1
        if n in mark_at:
            marks[mark_at.pop(n)] = float(ev.score(trainer.best().reshape(1, -1)).loss[0])
    return n, elapsed, marks


def run_seed(base: Config, seed: int, names: Optional[Iterable[str]] = None, *,
             done: Optional[dict[str, dict]] = None,
             on_result: Optional[Callable[[PipelineRun], None]] = None) -> list[PipelineRun]:
    """Every pipeline on one seed: the default first (it sets the budget), then BPTT, then ``names``
    (default: all :func:`candidates`). ``done`` maps method -> an earlier :class:`PipelineRun`'s dict of this
    seed, which is reused instead of run again."""
    cfg = regime_config(base, "default", seed)
    ev = Evaluator(cfg)
    done = dict(done or {})
    G, N = cfg.search.generations, cfg.finetune.after_evolution_steps or cfg.finetune.steps
    runs: list[PipelineRun] = []

    def finish(method, trainer, n, seconds, marks, report=True):
        h = ev.learning_measures(trainer.best())
        r = PipelineRun(method, seed, n, seconds, h["loss"], h["episode_gain"], marks)
        runs.append(r)
        if on_result is not None and report:
            on_result(r)

    if DEFAULT in done:
        runs.append(PipelineRun(**done[DEFAULT]))
    else:
        tr = HybridTrainer(cfg, es_generations=G, lr=cfg.finetune.lr)
        n, s, marks = _run(tr, ev, steps=G + N, mark_at={G: "after ES"})
        finish(DEFAULT, tr, n, s, marks)
    budget = runs[0].seconds
    if BPTT in done:
        runs.append(PipelineRun(**done[BPTT]))
    else:
        tr = BPTTTrainer(cfg, lr=cfg.finetune.lr)
        n, s, marks = _run(tr, ev, budget=budget, mark_at={N: ABLATION})
        finish(BPTT, tr, n, s, marks, report=False)
        if n < N:                        # the budget ran out first (a slower machine): the ablation goes on
            _, _, more = _run(tr, ev, steps=N - n, mark_at={N - n: ABLATION})
            runs[-1].marks.update(more)
        if on_result is not None:
            on_result(runs[-1])
    pool = candidates(cfg)
    for name in (list(pool) if names is None else list(names)):
        if name in done:
            runs.append(PipelineRun(**done[name]))
            continue
        tr = pool[name].build(cfg, budget)
        n, s, marks = _run(tr, ev, budget=budget)
        finish(name, tr, n, s, marks)
    return runs


@dataclass
class Row:
    method: str
    loss: Interval
    gain: Interval
    diff: Optional[Interval]         # method − BPTT from scratch, paired over seeds
    steps: float
    seconds: float
    per_seed: list[float]


@dataclass
class Verdict:
    rows: list[Row]
    seeds: list[int]
    runs: list[PipelineRun]

    def row(self, method: str) -> Row:
        return next(r for r in self.rows if r.method == method)

    def winner(self) -> Optional[str]:
        """The evolution-based pipeline with the lowest mean loss whose paired interval against BPTT from
        scratch lies below zero; None if there is none."""
        wins = [r for r in self.rows if r.method not in (BPTT, ABLATION) and r.diff is not None
                and r.diff.excludes_zero() and r.diff.mean < 0]
        return min(wins, key=lambda r: r.loss.mean).method if wins else None


def summarize(runs: list[PipelineRun]) -> Verdict:
    """Means, 95% t-intervals over seeds and paired differences against BPTT from scratch."""
    seeds = sorted({r.seed for r in runs if r.method == BPTT})
    by = {(r.method, r.seed): r for r in runs}
    methods = list(dict.fromkeys(r.method for r in runs))
    rows = []
    for m in methods:
        common = [s for s in seeds if (m, s) in by]
        if not common:
            continue
        loss = [by[(m, s)].loss for s in common]
        diff = None if m == BPTT else paired_ci(loss, [by[(BPTT, s)].loss for s in common])
        rows.append(Row(m, mean_ci(loss), mean_ci([by[(m, s)].episode_gain for s in common]), diff,
                        sum(by[(m, s)].steps for s in common) / len(common),
                        sum(by[(m, s)].seconds for s in common) / len(common), loss))
    # the ablation: BPTT for the default's BPTT steps from the initial genome, and the default against it
    abl = [s for s in seeds if (DEFAULT, s) in by and ABLATION in by[(BPTT, s)].marks]
    if abl:
        a = [by[(BPTT, s)].marks[ABLATION] for s in abl]
        rows.append(Row(ABLATION, mean_ci(a), mean_ci([float("nan")] * len(a)),
                        paired_ci(a, [by[(BPTT, s)].loss for s in abl]), float("nan"), float("nan"), a))
    rows.sort(key=lambda r: r.loss.mean)
    return Verdict(rows, seeds, runs)


def ablation_gap(v: Verdict) -> Optional[Interval]:
    """default − ablation, paired over seeds: what ES's phase buys the same BPTT (negative: ES helped)."""
    by = {(r.method, r.seed): r for r in v.runs}
    seeds = [s for s in v.seeds if (DEFAULT, s) in by and ABLATION in by[(BPTT, s)].marks]
    if not seeds:
        return None
    return paired_ci([by[(DEFAULT, s)].loss for s in seeds], [by[(BPTT, s)].marks[ABLATION] for s in seeds])


def markdown(v: Verdict, notes: dict[str, str] | None = None) -> list[str]:
    """The verdict as a markdown table (rows sorted by held-out MSE) and a one-line conclusion."""
    notes = notes or {}
    lines = ["| pipeline | steps | CPU s | held-out MSE | episode-specific gain | MSE − BPTT from scratch (paired) "
             "| per seed |", "|---|---|---|---|---|---|---|"]
    for r in v.rows:
        steps = "" if r.steps != r.steps else f"{r.steps:.0f}"
        secs = "" if r.seconds != r.seconds else f"{r.seconds:.1f}"
        gain = "" if r.gain.mean != r.gain.mean else format_interval(r.gain)
        diff = "" if r.diff is None else f"{r.diff.mean:+.3f} ± {r.diff.half_width:.3f}"
        lines.append(f"| {r.method} | {steps} | {secs} | {format_interval(r.loss)} | {gain} | {diff} | "
                     f"{' / '.join(f'{x:.3f}' for x in r.per_seed)} |")
    gap = ablation_gap(v)
    lines.append("")
    if gap is not None:
        lines.append(f"What the ES phase buys the same BPTT (default − ablation, paired): "
                     f"{gap.mean:+.3f} ± {gap.half_width:.3f}.")
    w = v.winner()
    lines.append(f"Winner against BPTT from scratch (paired 95% CI below zero): {w or 'none'}.")
    shown = [r.method for r in v.rows]
    if any(name in shown for name in notes):
        lines += ["", "Candidates: " + "; ".join(f"{name}: {note}" for name, note in notes.items() if name in shown) + "."]
    return lines


def run_verdict(base: Config, seeds: Iterable[int], names: Optional[Iterable[str]] = None, *,
                done: Optional[list[dict]] = None,
                on_result: Optional[Callable[[PipelineRun], None]] = None) -> Verdict:
    """The whole experiment over ``seeds`` (see the module's docstring); ``done``: earlier runs' dicts
    (e.g. read back from a JSON-lines file) that are reused, so an interrupted verdict continues."""
    earlier: dict[int, dict[str, dict]] = {}
    for d in done or []:
        earlier.setdefault(int(d["seed"]), {})[d["method"]] = d
    runs: list[PipelineRun] = []
    for seed in seeds:
        runs += run_seed(base, seed, names, done=earlier.get(seed), on_result=on_result)
    return summarize(runs)


def to_json(run: PipelineRun) -> str:
    return json.dumps(asdict(run))


def tiny(base: Config) -> Config:
    """A config small enough for a test: 2 sinusoids of 2 mini-batches, a few generations and steps."""
    return with_overrides(base, ["task.num_tasks=2", "task.batches_per_task=2", "network.hidden=[8,8]",
                                 "search.popsize=4", "search.generations=2", "finetune.after_evolution_steps=2",
                                 "finetune.episodes=2", "evaluation.episodes=2", "evaluation.heldout_episodes=4"])
