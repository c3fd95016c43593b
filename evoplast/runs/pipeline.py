"""The default pipeline as one library call: ``evoplast.evolve(cfg)`` (what ``scripts/evolve.py`` runs).

1. the evolution (:func:`~evoplast.runs.evolve.run_evolution`: ES in a run session, on Ray or in-process,
   a line per generation, checkpoints, the held-out report against every baseline);
2. with ``finetune.after_evolution``, BPTT from the search center (:func:`~evoplast.runs.finetune.run_finetune`,
   nested under the evolution run, checkpointed and resumable like every run);
3. the evolution run's page rewritten with the rule to use (the fine-tuned genome when it is better on
   held-out episodes).

:func:`summary_lines` is the held-out table the command prints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from ..bench.verdict import measured_line
from ..config import Config
from . import evolve as evolution_run        # looked up at call time: tests may wrap run_evolution
from .evolve import EvolutionResult, add_finetune_to_description
from .finetune import FinetuneResult, run_finetune, train_spec_of
from .run_page import CENTER, next_commands, rule_equations
from .tracking import redact_uri, resolve_tracking_uri


@dataclass
class PipelineResult:
    evolution: EvolutionResult
    finetune: Optional[FinetuneResult] = None     # None: no fine-tune (finetune.after_evolution false, or stopped)
    finetuned_better: bool = False                # the fine-tuned genome is the rule to use

    @property
    def status(self) -> str:
        return self.evolution.status

    @property
    def run_id(self) -> str:
        return self.evolution.run_id


def evolve(cfg: Config, *, resume: Optional[dict[str, Any]] = None, out: Callable[[str], None] = print,
           print_every: int = 0) -> PipelineResult:
    """Run (or resume) the default pipeline on ``cfg``: ES, then (``finetune.after_evolution``) BPTT from the
    search center. ``print_every``: a progress line every N generations (default: about 50 per run).
    A signal stops it like any run (the evolution returns KILLED; the fine-tune raises
    :class:`~evoplast.runs.signals.Interrupted` after writing its checkpoint)."""
    result = evolution_run.run_evolution(cfg, resume=resume, out=out,
                           print_every=print_every or max(1, cfg.search.generations // 50))
    if result.status != "FINISHED":
        return PipelineResult(result)
    for line in summary_lines(cfg, result):
        out(line)
    ft, better = finetune_center(cfg, result, out) if cfg.finetune.after_evolution else (None, False)
    out(measured_line())                # what evolution in the loop is worth against BPTT alone, plainly
    return PipelineResult(result, ft, better)


def summary_lines(cfg: Config, result: EvolutionResult) -> list[str]:
    """The summary of a finished evolution: the evolved rule against its own init and online SGD (and the other
    baselines), on held-out episodes."""
    lines: list[str] = []
    out = lines.append
    r = result.report
    first = result.history[0]
    out("")
    best = max(h["best"] for h in result.history)
    out(f"MLflow run {result.run_id}: {result.generations} generations, best training fitness "
          f"{first['best']:.3f} (generation 1) -> {best:.3f} (best so far)")
    metric = "MSE" if cfg.task.name == "sinusoid" else "cross-entropy and accuracy, meta-test classes"
    out(f"Held-out episodes ({cfg.evaluation.heldout_episodes}, {cfg.task.order} stream), query {metric} "
          f"(baselines: learning rate tuned on validation episodes):")
    rows = [
        (CENTER, "", ""),
        ("same genome, plasticity off", "_plasticity_off", ""),
        ("online SGD on the plastic weights only, same initial weights", "sgd_plastic_weights",
         r["sgd_plastic_weights_lr"]),
        ("online SGD on every weight and bias, same initial weights", "sgd_same_init", r["sgd_same_init_lr"]),
        ("feedback alignment, same initial weights", "fa_same_init", r["fa_same_init_lr"]),
        ("online SGD, seed's initial weights", "sgd_seed_init", r["sgd_seed_init_lr"]),
        ("online SGD on the shuffled (iid) stream, same initial weights", "sgd_iid_same_init",
         r["sgd_iid_same_init_lr"]),
    ]
    classification = "accuracy" in r
    if classification:
        out(f"  {'':<64s} {'loss':>7s} {'accuracy':>9s}")
    for name, key, lr in rows:
        loss_key = "loss" + key if key.startswith("_") or not key else key
        acc_key = ("accuracy" + key if key.startswith("_") or not key else key + "_accuracy")
        acc = f" {r[acc_key]:9.3f}" if classification else ""
        out(f"  {name:<64s} {r[loss_key]:7.3f}{acc}" + (f"   (lr {lr:g})" if lr != "" else ""))
    if classification:
        out(f"  {'nearest class mean on the initial features (prototypes)':<64s} {'':>7s} {r['prototype_accuracy']:9.3f}")
        out(f"  {'best input-only predictor (fitted on training episodes)':<64s} {'':>7s} {r['input_only_accuracy']:9.3f}")
    else:
        out(f"  {'best input-only predictor (fitted on training episodes)':<64s} {r['input_only']:7.3f}")
        for key, what in (("transfer_long", "4x longer stream"), ("transfer_wide", "4x larger batches"),
                          ("transfer_both", "4x longer, 4x larger batches")):
            if key in r:
                out(f"  {'transfer, ' + what + ': evolved rule':<64s} {r[key]:7.3f}   "
                      f"(non-finite {r[key + '_nonfinite']:.0%} of episodes)")
                out(f"  {'transfer, ' + what + ': SGD on the plastic weights':<64s} "
                      f"{r[key + '_sgd_plastic_weights']:7.3f}   (lr {r[key + '_sgd_plastic_weights_lr']:g})")
    out(f"  learning gain (plasticity off - on)                              {r['learning_gain']:+7.3f}")
    out(f"  episode-specific gain (other episode's tasks - own tasks)        {r['episode_gain']:+7.3f}")
    out(f"Checkpoint: {result.checkpoint}")
    return lines


def next_lines(run_id: str, finetuned: bool, cfg: Config) -> list[str]:
    """The "Next:" block: the commands that continue from this run, its id filled in."""
    return ["Next:"] + [f"  {c}" for c in next_commands(run_id, finetuned=finetuned,
                                                          uri=redact_uri(resolve_tracking_uri(cfg.tracking.tracking_uri)))]


def finetune_center(cfg: Config, result: EvolutionResult, out: Callable[[str], None] = print) -> tuple[FinetuneResult, bool]:
    """The hybrid's second half (``finetune.after_evolution``): BPTT from the search center, nested under the run
    (far better than ES alone; level with BPTT from scratch at equal time: docs/outer-trainers.md). Returns the
    fine-tune and whether its genome is the rule to use (better on held-out episodes than the center)."""
    steps = cfg.finetune.after_evolution_steps or cfg.finetune.steps
    ft_cfg = cfg.replace(**{"finetune.steps": steps})
    out("")
    ft = run_finetune(ft_cfg, result.center.reshape(1, -1), [CENTER], parent_run_id=result.run_id,
                      print_every=max(1, steps // 5), out=out)
    b, a = ft.before[0], ft.after[0]
    out(f"Fine-tuned by BPTT ({steps} meta-steps, MLflow run {ft.run_id} nested under {result.run_id}): "
          f"held-out {'MSE' if cfg.task.name == 'sinusoid' else 'cross-entropy'} {b['loss']:.3f} -> {a['loss']:.3f}, "
          f"episode-specific gain {b['episode_gain']:+.3f} -> {a['episode_gain']:+.3f}")
    better = a["loss"] <= b["loss"]
    out(f"The rule to use: {'ES then BPTT (the fine-tuned genome)' if better else 'ES alone (the ' + CENTER + '; fine-tuning did not help on held-out episodes)'}")
    evo_spec, spec = train_spec_of(cfg)
    add_finetune_to_description(cfg, result.run_id, ft.run_id, b["loss"], a["loss"], better, report=result.report,
                                generations=result.generations, history=result.history, steps=steps,
                                equations=rule_equations(evo_spec.model, evo_spec.decode(result.center.float())),
                                finetuned_equations=rule_equations(spec.model, spec.decode(ft.genome.float())),
                                finetuned_genome=ft.genome)
    return ft, better


__all__ = ["PipelineResult", "evolve", "summary_lines", "next_lines", "finetune_center"]
