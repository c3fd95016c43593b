"""One fine-tune (gradient meta-training) run: genomes -> BPTT -> held-out before/after -> MLflow.

The run is nested under its evolution run when it starts from one (``mlflow.parentRunId``), so the MLflow
UI shows evolution -> fine-tune. From a config alone it meta-trains from the initial genome: the
paper's own method, the baseline for evolution.
"""

from __future__ import annotations

import fnmatch
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from ..config import Config, ConfigError, flatten, to_yaml
from ..evaluation import Evaluator
from ..genome import GenomeSpec, build_genome_spec
from ..seeding import Purpose
from ..tasks import make_task
from ..trainers.bptt import BPTTTrainer
from ..trainers.loop import BaseCallback, run_outer
from .callbacks import HeldOutCallback, ProgressCallback, TrackingCallback
from .progress import LineStream, quiet_libraries
from .run_page import (applicable_params, child_name, finetune_description, rule_equations, rule_legend, run_name,
                       run_tags)
from .session import RunSession
from .signals import Interrupted
from .tracking import Tracker

# what may change when fine-tuning a run's genomes (anything else changes the genome's meaning)
FINETUNE_OVERRIDABLE = ("finetune.", "tracking.", "evaluation.", "device", "export.")


def check_finetune_overrides(overrides) -> None:
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if not any(key == k or (k.endswith(".") and key.startswith(k)) for k in FINETUNE_OVERRIDABLE):
            raise ConfigError(f"{key} cannot change when fine-tuning a run's genomes (only "
                              f"{', '.join(FINETUNE_OVERRIDABLE)} can); use --config to start from scratch")


def train_spec_of(cfg: Config) -> tuple[GenomeSpec, GenomeSpec]:
    """``(evolution spec, training spec)``: the latter also trains the segments matched by ``finetune.train``."""
    task = make_task(cfg.task)
    evo = build_genome_spec(cfg, task.n_in, task.n_out, task.kind)
    names = {s.name for s in evo.evolved}
    names |= {s.name for s in evo.segments if any(fnmatch.fnmatch(s.name, pat) for pat in cfg.finetune.train)}
    if not names:
        raise ConfigError("nothing to train: the genome has no evolved segments and finetune.train matches none")
    return evo, evo.with_evolved(names)


@dataclass
class FinetuneResult:
    run_id: str
    parent_run_id: Optional[str]
    labels: list[str]
    before: list[dict[str, float]]
    after: list[dict[str, float]]
    chosen: int                                  # index of the genome kept (best on validation episodes)
    genome: torch.Tensor                         # [D] chosen genome in the training spec
    trained: list[str]
    history: list[dict[str, float]] = field(default_factory=list)
    ui_command: str = ""


def run_finetune(cfg: Config, genomes: Optional[torch.Tensor], labels: list[str], *,
                 parent_run_id: Optional[str] = None, out: Callable[[str], None] = print,
                 print_every: int = 0, resume: Optional[dict[str, Any]] = None,
                 callbacks: tuple = ()) -> FinetuneResult:
    """Meta-train ``genomes [k, D]`` (evolution spec of ``cfg``), or the initial genome when None, in a
    :class:`~evoplast.runs.session.RunSession`; or continue the fine-tune of the checkpoint ``resume``
    (``genomes``, ``labels`` and ``parent_run_id`` are then the checkpoint's).

    A checkpoint ``<checkpoint.dir>/<run id>/latest.pt`` is written every ``checkpoint.every`` meta-steps and
    when a signal stops the run: SIGINT / SIGTERM let the meta-step in flight finish, write it, end the run as
    KILLED, print ``python scripts/finetune.py --resume <checkpoint>`` and raise
    :class:`~evoplast.runs.signals.Interrupted`; the resumed run ends where an uninterrupted one ends, bit
    for bit. Nested runs of ``parent_run_id`` that a dead process left RUNNING are ended as KILLED first.
    ``callbacks`` run after the built-in ones (tests use them)."""
    quiet_libraries()
    with RunSession(cfg, "finetune", out=out) as session:
        cfg = session.cfg
        evo_spec, spec = train_spec_of(cfg)
        device = "cuda" if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()) else "cpu"
        ev = Evaluator(cfg, device, spec=spec)
        tracker = session.tracker
        steps = cfg.finetune.steps
        if resume is not None:
            parent_run_id = resume.get("parent_run_id") or None
            labels = list(resume["labels"])
            session.resume(resume, total=steps)
            before = [dict(b) for b in resume["before"]]
            earlier = [dict(r) for r in resume.get("history", [])]
            logged = session.logged_through("meta/loss")
            trainer = BPTTTrainer(cfg, resume["trainer"]["genome"], spec=spec, device=device)
            trainer.load_state_dict(resume["trainer"])
        else:
            start = spec.initial_vector().reshape(1, -1) if genomes is None else spec.encode(evo_spec.decode(genomes))
            labels = labels if genomes is not None else ["initial genome"]
            flat = flatten(cfg)
            if parent_run_id:
                parent = tracker.get_run(parent_run_id)
                experiment = tracker.client.get_experiment(parent.info.experiment_id).name
                name = child_name("finetune", parent.info.run_name) if parent.info.run_name else run_name(flat, "finetune")
            else:
                experiment = cfg.tracking.experiment
                name = f"{flat.get('task.name')}-{flat.get('rule.name')}-bptt-s{flat.get('seed')}"
            session.start(name, experiment=experiment, parent_run_id=parent_run_id, source="scripts/finetune.py",
                          tags=run_tags(flat, "es+bptt" if parent_run_id else "bptt"), config_artifact=False,
                          params={**applicable_params(flat, ray=False, gpu=device != "cpu", command="finetune"),
                                  "finetune.source": parent_run_id or "scratch",
                                  "finetune.genomes": ", ".join(labels),
                                  "finetune.trained_segments": len(spec.evolved)})
            before = [ev.learning_measures(g) for g in start]
            earlier, logged = [], 0
            # step 0: the "before" point of the held-out curve (per genome only when there are several)
            tracker.log_metrics({"heldout/loss": min(b["loss"] for b in before),
                                 **({f"heldout/loss_g{i}": b["loss"] for i, b in enumerate(before)} if len(before) > 1
                                    else {})}, step=0)
            trainer = BPTTTrainer(cfg, start, spec=spec, device=device)               # [k, D], k at once
        out(f"evoplast: fine-tune run {tracker.run_id}" + (f" (nested under {parent_run_id})" if parent_run_id else "")
            + f" | {len(labels)} genome(s), {spec.dim} trained numbers | "
            + ("full BPTT" if not cfg.finetune.bptt_window else f"truncated BPTT, window {cfg.finetune.bptt_window}")
            + (", activation checkpointing" if cfg.finetune.checkpoint_activations else "")
            + (f" | resumed at meta-step {session.step}" if resume is not None else ""))
        print_every = print_every or max(1, steps // 20)
        heldout = HeldOutCallback(ev, cfg.finetune.eval_every, last=steps, genomes=lambda t: t.current())
        progress = _FinetuneProgress(steps, "meta-step", stream=None if out is print else LineStream(out),
                                     every=print_every)
        progress.heldout = f"{min(b['loss'] for b in before):.3f}"
        tracking = TrackingCallback(tracker, logged_through=logged, end_run=False,
                                    select=lambda row: chart_metrics(row, len(labels)))
        rows: list[dict[str, Any]] = []

        def extra() -> dict[str, Any]:
            return {"outer": "bptt", "steps": steps, "parent_run_id": parent_run_id or "", "labels": list(labels),
                    "before": [dict(b) for b in before], "history": earlier + [_history_row(r) for r in rows]}

        class Rows(BaseCallback):        # the rows done so far, for the checkpoint (before it is written)
            def on_step(self, step, metrics, trainer):
                rows.append({"step": step, **metrics})

        checkpoints = session.checkpoints(cfg.checkpoint.every, extra)
        try:
            run_outer(trainer, steps=steps, start=session.step, stop=session.stop,
                      callbacks=[heldout, progress, tracking, Rows(), checkpoints, *callbacks])
        except OSError as exc:
            raise session.write_failed(exc, f"a checkpoint of fine-tune run {tracker.run_id}") from None
        session.stop.immediate = True           # from here (held-out, artifacts) a signal stops at once
        if session.stop.signal is not None:
            session.stopped("meta-step", session.step + len(rows))
        history = earlier + [_history_row(r) for r in rows]
        final = trainer.current()
        after = [ev.learning_measures(g) for g in final]
        validation = ev.episodes(Purpose.VALIDATION, 1, cfg.evaluation.heldout_episodes)
        chosen = int(ev.score(final, episodes=validation).loss.argmin())
        curve = [(0, min(b["loss"] for b in before))] + [(int(r["step"]), float(r["heldout/loss"])) for r in history
                                                          if "heldout/loss" in r]
        try:
            _log_artifacts(tracker, cfg, spec, final[chosen], labels[chosen], parent_run_id, history, before, after,
                           curve, labels)
        except OSError as exc:
            raise session.write_failed(exc, f"an artifact of fine-tune run {tracker.run_id}") from None
        tracker.log_table({"genome": list(labels), "held-out before": [b["loss"] for b in before],
                           "held-out after": [a["loss"] for a in after],
                           "kept": [i == chosen for i in range(len(labels))]}, "finetune_summary.json")
        tracker.set_description(finetune_description(
            run_id=tracker.run_id, parent_run_id=parent_run_id, labels=labels, before=before, after=after,
            chosen=chosen, steps=steps, equations=rule_equations(spec.model, spec.decode(final[chosen].float())),
            legend=rule_legend(spec.model), uri=tracker.shown_uri, experiment_id=tracker.experiment_id,
            classification=ev.task.kind != "regression", skipped=int(trainer.inner.skipped)))
        if session.stop.signal is not None:     # a signal that a library swallowed: still a stop
            raise Interrupted(session.stop.signal)
        session.finish()
        return FinetuneResult(tracker.run_id, parent_run_id, labels, before, after, chosen, final[chosen],
                              [s.name for s in spec.evolved], history, tracker.ui_command())


def _history_row(row: dict[str, Any]) -> dict[str, float]:
    """What the fine-tune keeps of a meta-step (its plot and the checkpoint): loss, gradient norm, held-out."""
    keep = ("step", "meta_loss", "grad_norm", "skipped", "seconds", "heldout/loss")
    return {k: float(row[k]) for k in keep if k in row}


def chart_metrics(row: dict[str, float], genomes: int) -> dict[str, float]:
    """The metrics of one meta-step worth a chart: not ``meta/loss_g0`` / ``heldout/loss_g0`` beside the same
    ``meta/loss`` / ``heldout/loss`` of a single genome, not the constant ``speed/lifetimes``, not the per-step
    ``meta/skipped`` flag; the running count ``meta/skipped_steps`` only once an update was skipped."""
    out = {}
    for key, value in row.items():
        if genomes == 1 and key.rsplit("_g", 1)[-1].isdigit() and "_g" in key:
            continue
        if key in ("speed/lifetimes", "meta/skipped") or (key == "meta/skipped_steps" and not value):
            continue
        out[key] = value
    return out


class _FinetuneProgress(ProgressCallback):
    """The fine-tune's progress line: meta-loss, gradient norm, held-out, s/step, skipped updates."""

    def values(self, step, metrics):
        return {"meta-loss": f"{metrics['meta_loss']:.3f}", "grad norm": f"{metrics['grad_norm']:.3g}",
                "held-out": self.heldout, "s/step": f"{(time.perf_counter() - self.t0) / max(1, step):.3f}",
                "skipped": str(int(metrics["skipped_steps"]))}


def _log_artifacts(tracker: Tracker, cfg: Config, spec: GenomeSpec, genome: torch.Tensor, label: str,
                   parent_run_id: Optional[str], history, before, after, curve=(), labels=()) -> None:
    from .plots import finetune_curve

    with tempfile.TemporaryDirectory(prefix="evoplast-finetune-") as tmp:
        d = Path(tmp)
        values = spec.decode(genome.float())
        torch.save({"format": "evoplast.finetuned_genome", "version": 1, "genome": genome,
                    "trained": [s.name for s in spec.evolved],
                    "segments": {k: v.contiguous() for k, v in values.items()},
                    "config_yaml": to_yaml(cfg), "parent_run_id": parent_run_id or "", "label": label},
                   d / "finetuned_genome.pt")
        tracker.log_artifact(d / "finetuned_genome.pt")
    tracker.log_text(to_yaml(cfg), "config.yaml")
    tracker.log_dict({"before": list(before), "after": list(after)}, "finetune_report.json")
    tracker.log_figure(finetune_curve(history, before, after, heldout=curve, labels=labels), "finetune_curve.png")
