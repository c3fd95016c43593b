"""``scripts/evaluate.py`` as a library call: a genome against every baseline on held-out episodes, the OML
baseline at a stated meta-compute, accuracy vs N (classification), the paper's analyses (update-gradient
cosine, forgetting), a table, plots and an MLflow run (a :class:`~evoplast.runs.session.RunSession`, nested
under the evaluated run).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import yaml

from ..config import Config, flatten, from_dict
from ..errors import UsageError
from ..evaluation import Evaluator
from ..science import report as science_report
from ..science.analysis import add_oml, equal_lifetimes_steps, forgetting_matrix, score_oml, update_gradient_cosine
from ..seeding import Purpose
from .artifacts import genome_of_run
from .finetune import check_finetune_overrides, train_spec_of
from .plots import accuracy_vs_n, cosine_curves, forgetting_heatmaps, mse_vs_tasks_seen, save_figure
from .preflight import preflight
from .run_page import (CENTER, applicable_params, child_name, learner_curves, rule_equations, run_name, run_tags,
                       table_markdown)
from .session import RunSession
from .tracking import Tracker, resolve_tracking_uri

N_SWEEP = (5, 10, 20, 50)       # classes per episode of the accuracy-vs-N sweep (those the data allow)


@dataclass
class EvaluationResult:
    run_id: str                              # the evaluation's MLflow run
    report: dict[str, Any]                   # science.report.report (+ OML keys)
    accuracy_vs_n: dict[int, dict[str, float]]
    cosine: Any                              # [T, plastic layers] tensor
    forgetting: dict[str, dict[str, Any]]


def run_evaluation(cfg: Optional[Config], *, run_id: Optional[str], which: str, budget: str, out_dir: Path,
                   overrides=(), out: Callable[[str], None] = print) -> EvaluationResult:
    """Evaluate the ``which`` genome of ``run_id`` (its own config, with ``overrides``), or the seed genome of
    ``cfg``; ``budget``: the OML baseline's meta-compute (``lifetimes``, ``wallclock`` or a number of
    meta-steps, 0 skips it). Prints through ``out``; writes plots and ``evaluation.json`` to ``out_dir``."""

    # 1. the genome and its config
    if run_id:
        check_finetune_overrides(overrides)
        tracker = Tracker(resolve_tracking_uri())
        run = tracker.get_run(run_id)
        saved, _ = genome_of_run(tracker, run_id, which)
        from evoplast.config import merge_overrides, upgrade

        cfg = from_dict(merge_overrides(upgrade(yaml.safe_load(saved["config_yaml"])), overrides))
        evo_spec, _ = train_spec_of(cfg)
        spec = evo_spec.with_evolved(set(saved["trained"])) if "trained" in saved else evo_spec
        genome = saved["genome"].float()
    else:
        spec, genome = None, None
    preflight(cfg)                      # device, memory, folders, data: before any compute or a new store
    ev = Evaluator(cfg, spec=spec)
    genome = ev.spec.initial_vector() if genome is None else genome
    classification = ev.task.kind == "classification"
    genome_values = ev.spec.decode(genome.reshape(1, -1).float())
    out_dir.mkdir(parents=True, exist_ok=True)
    out(f"evoplast: evaluating {'run ' + run_id + ' (' + which + ')' if run_id else 'the seed genome'} "
          f"on {cfg.evaluation.heldout_episodes} held-out episodes of {cfg.task.name}")

    # 2. the protocol: the rule, its own init with plasticity off, and the baselines on the same streams
    report = science_report.report(ev, genome)
    oml = None
    seconds = None
    if budget == "lifetimes":
        steps = equal_lifetimes_steps(cfg)
        what = (f"{steps} meta-steps x {cfg.finetune.episodes} episodes: the lifetimes of the evolution's "
                f"{cfg.search.generations} generations x {cfg.search.popsize} genomes x {cfg.evaluation.episodes} episodes")
    elif budget == "wallclock":
        if run.info.end_time is None:
            raise UsageError(f"--oml-budget wallclock: run {run_id} has not finished (no duration)")
        seconds = (run.info.end_time - run.info.start_time) / 1000.0
        steps, what = 10 ** 9, f"{seconds:.0f} s of meta-steps, the evolution run's wall-clock time"
    else:
        steps = int(budget)
        what = f"{steps} meta-steps (set on the command line)"
    if steps:
        out(f"  meta-learning the OML baseline's initial weights: {what}...")
        progress = oml_progress(steps, seconds)
        oml, o = add_oml(report, ev, cfg, steps, seconds=seconds, progress=progress)
        progress.close()

    # 3. accuracy vs N (classification): one genome, every N its output layer and the data allow
    by_n = {}
    if classification:
        top = min(ev.task.n_out, ev.task.images.test.shape[0], ev.task.images.train.shape[0])
        for n in sorted({*(x for x in N_SWEEP if x <= top), cfg.task.num_tasks}):
            cfg_n = cfg.replace(**{"task.num_tasks": n, "task.output_classes": ev.task.n_out})
            ev_n = Evaluator(cfg_n, spec=ev.spec)
            held = ev_n.episodes(Purpose.HELDOUT, 0, cfg.evaluation.heldout_episodes)
            row = {("fine-tuned rule" if which == "finetuned" else "evolved rule"): ev_n.score(genome.reshape(1, -1), episodes=held).accuracy.item(),
                   "plasticity off": ev_n.score(genome.reshape(1, -1), episodes=held, learn=False).accuracy.item(),
                   "SGD of the plastic weights, same init": science_report.tuned_sgd(ev_n, genome, plastic_only=True)[0].accuracy.item(),
                   "prototypes (nearest class mean), same init": science_report.prototype(ev_n, genome, held).mean().item(),
                   "SGD, same init": science_report.tuned_sgd(ev_n, genome)[0].accuracy.item(),
                   "feedback alignment, same init": science_report.tuned_sgd(ev_n, genome, feedback="alignment")[0].accuracy.item(),
                   "SGD, random init": science_report.tuned_sgd(ev_n, ev.spec.initial_vector())[0].accuracy.item(),
                   "SGD iid, same init": science_report.tuned_sgd(ev_n, genome, order="iid")[0].accuracy.item()}
            if oml is not None:
                row["OML (meta-learned init, SGD head)"] = score_oml(ev_n, *oml, held).accuracy.item()
            by_n[n] = row

    # 4. analyses: is the rule's update a gradient step? how much does learning task j erase task i?
    held = ev.episodes(Purpose.HELDOUT, 0, min(cfg.evaluation.heldout_episodes, 32))
    cosine = update_gradient_cosine(ev, genome, held)                                  # [T, plastic layers]
    rule = "fine-tuned rule" if which == "finetuned" else "evolved rule"   # the genome under test
    forgetting = {rule: forgetting_matrix(ev, genome, held)}
    sgd_lr = report["sgd_same_init_lr"]
    forgetting["online SGD, same init"] = forgetting_matrix(
        ev, genome, held, learner=science_report.sgd_learner(ev), extra={"sgd.lr": torch.tensor([sgd_lr])})

    # 5. the table, the plots, the MLflow run
    metric = "accuracy" if classification else "MSE"
    key = (lambda k: f"{k}_accuracy" if k else "accuracy") if classification else (lambda k: k or "loss")
    rows = [(rule, key("")), ("same genome, plasticity off", "accuracy_plasticity_off" if classification
                                        else "loss_plasticity_off"),
            ("online SGD of the plastic weights only, same init", key("sgd_plastic_weights")),
            ("online SGD of every weight and bias, same init", key("sgd_same_init")),
            ("feedback alignment, same init", key("fa_same_init")),
            ("online SGD, random (seed) init", key("sgd_seed_init")),
            ("online SGD on the iid stream, same init", key("sgd_iid_same_init"))]
    rows.append(("prototypes (nearest class mean), same init", "prototype_accuracy") if classification else
                ("best input-only predictor (no learning)", "input_only"))
    if oml is not None:
        rows.append((f"OML: meta-learned init, SGD of the head ({int(report['oml_meta_steps'])} meta-steps)", key("oml")))
    for k, what in (("transfer_long", "4x longer stream"), ("transfer_wide", "4x larger batches"),
                    ("transfer_both", "4x longer, 4x larger batches")):
        if k in report:
            rows += [(f"transfer, {what}: {rule}", k), (f"transfer, {what}: SGD of the plastic weights",
                                                              f"{k}_sgd_plastic_weights")]
    out(""); out(f"Held-out {metric} ({cfg.task.order} stream, {cfg.task.num_tasks} {'classes' if classification else 'sinusoids'}):")
    for name, k in rows:
        nonfinite = f"   (non-finite in {report[k + '_nonfinite']:.0%} of episodes)" if k + "_nonfinite" in report else ""
        out(f"  {name:<58s} {report[k]:7.3f}{nonfinite}")
    out(f"  {'episode-specific gain of the ' + rule:<50s} {report['episode_gain']:+7.3f}")
    if by_n:
        names = list(next(iter(by_n.values())))
        out(""); out(f"Accuracy vs N (classes per episode), {cfg.task.batches_per_task * cfg.task.batch_size} shots:")
        out("  " + f"{'':<36s}" + "".join(f"{f'N={n}':>8s}" for n in by_n))
        for name in names:
            out("  " + f"{name:<36s}" + "".join(f"{by_n[n][name]:8.3f}" for n in by_n))
    out(""); out("Mean cosine(rule update, -gradient) per plastic layer: " +
          ", ".join(f"layer {l}: {c:+.3f}" for l, c in zip(ev.spec.model.plastic_layers, cosine.mean(0).tolist())))
    fm_key = "accuracy" if classification else "loss"
    for name, fm in forgetting.items():
        m = fm[fm_key]
        first_task_after_all = m[-1, 0].item()
        out(f"Forgetting ({name}): {fm_key} on task 1 right after it {m[0, 0].item():.3f}, after all tasks "
              f"{first_task_after_all:.3f}")

    plots = [forgetting_heatmaps({k: v[fm_key] for k, v in forgetting.items()}, out_dir / "forgetting.png", fm_key),
             cosine_curves(cosine, ev.spec.model.plastic_layers, held.curve_steps, out_dir / "cosine.png")]
    if oml is not None:
        report["curves_per_episode"]["oml"] = o.curve_per_episode[0].tolist()
    plots.append(save_figure(mse_vs_tasks_seen(learner_curves(report, "fine-tuned rule" if which == "finetuned" else CENTER), title=f"held-out episodes, {cfg.task.order} stream",
                                               ylabel="query MSE" if not classification else "query cross-entropy"),
                             out_dir / "loss_vs_tasks_seen.png"))
    if by_n:
        plots.append(accuracy_vs_n(by_n, out_dir / "accuracy_vs_n.png"))
    result = {"report": report, "accuracy_vs_n": by_n, "cosine_per_step": cosine.tolist(),
              "forgetting": {k: {m: v.tolist() for m, v in fm.items()} for k, fm in forgetting.items()}}
    (out_dir / "evaluation.json").write_text(json.dumps(result, indent=1))

    flat = flatten(cfg)
    name = (child_name(f"evaluate {which}", run.info.run_name) if run_id and run.info.run_name
            else run_name(flat, f"evaluate {which}"))
    with RunSession(cfg, "evaluate", checks=False) as session:      # its MLflow run, ended FINISHED or FAILED
        tracker = session.tracker
        session.start(name, experiment=cfg.tracking.experiment if not run_id else
                      tracker.client.get_experiment(run.info.experiment_id).name,
                      parent_run_id=run_id, tags=run_tags(flat, "evaluation"), source="scripts/evaluate.py",
                      params={**applicable_params(flat, ray=False, command="evaluate"), "evaluate.which": which},
                      config_artifact=False)
        tracker.log_table({"learner": [n for n, _ in rows], ("accuracy" if classification else "query MSE"):
                           [float(report[k]) for _, k in rows]}, "heldout_summary.json")
        tracker.set_description("\n".join([f"Evaluation of the {which} genome" +
                                            (f" of run `{run_id}`" if run_id else "") + ".", "",
                                            "```", *rule_equations(ev.spec.model, genome_values), "```", "",
                                            table_markdown([(n, float(report[k])) for n, k in rows],
                                                           ("learner", "accuracy" if classification else "query MSE"))]))
        for n, row in by_n.items():
            tracker.log_metrics({f"accuracy_vs_n/{name}": v for name, v in row.items()}, step=n)
        for i, row in enumerate(cosine.tolist()):
            tracker.log_metrics({f"cosine/layer{l}": c for l, c in zip(ev.spec.model.plastic_layers, row)}, step=i)
        for f in [*plots, out_dir / "evaluation.json"]:
            tracker.log_artifact(f)
        session.finish()
    out(""); out(f"Plots and evaluation.json in {out_dir}/; MLflow run {tracker.run_id}"
          + (f" (nested under {run_id})" if run_id else ""))
    out(f"Look at it: {tracker.ui_command()}")
    return EvaluationResult(session.run_id, report, by_n, cosine, forgetting)


def oml_progress(steps: int, seconds: float | None, stream=None):
    """``(meta-steps done, meta-loss) -> None`` for :func:`~evoplast.science.analysis.oml_train`: a progress line with
    elapsed time and ETA (a bar in a terminal, ~20 plain lines in a log): over the meta-steps, or over the
    seconds of a wall-clock budget."""
    import time

    from evoplast.runs.progress import Progress

    if seconds is not None:
        bar = Progress(max(1, int(seconds)), "OML s", stream=stream)
    else:
        bar = Progress(steps, "OML meta-step", stream=stream)
    t0 = time.monotonic()

    def update(done: int, loss: float) -> None:
        at = min(bar.total, int(time.monotonic() - t0)) if seconds is not None else done
        if seconds is None or at > getattr(update, "at", -1):
            update.at = at
            bar.update(at, {**({"meta-steps": str(done)} if seconds is not None else {}), "meta-loss": f"{loss:.3f}"})

    update.close = bar.close
    return update
