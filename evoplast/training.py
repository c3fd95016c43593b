"""One run of any outer trainer (es, bptt, pes, hybrid) on :func:`evoplast.trainers.loop.run_outer`: an
MLflow run, progress, held-out evaluation, checkpoints, signals, exact resume (``scripts/train.py``).

Ctrl-C / SIGTERM finish the step in flight, write ``<checkpoint.dir>/<run id>/latest.pt`` and end the
MLflow run as KILLED; :func:`run_training` with ``resume=`` that checkpoint continues the same MLflow run
and reaches the state an uninterrupted run reaches, bit for bit.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from .config import Config, flatten, to_yaml
from .evaluation import Evaluator
from .describe import applicable_params, run_tags
from .preflight import check_data, check_device
from .progress import LineStream, quiet_libraries
from .runs import genome_record
from .session import RunLock, refuse_finished, write_failed
from .signals import Interrupted, StopFlag
from .tracking import Tracker, environment_params, resolve_tracking_uri
from .trainers import TRAINERS, make_trainer
from .trainers.callbacks import CheckpointCallback, HeldOutCallback, ProgressCallback, TrackingCallback
from .trainers.loop import run_outer

OUTERS = tuple(TRAINERS)          # es, bptt, pes, hybrid, nres (scripts/train.py lists them too, before any import)
CHECKPOINT_FORMAT = "evoplast.outer_run"   # the checkpoint's "kind": not an evolve.py checkpoint


def default_steps(cfg: Config, outer: str) -> int:
    """Steps of a run when ``--steps`` is not given: generations (es), meta-steps (bptt, pes: one
    truncation each), both (hybrid: ``search.generations`` of ES, then ``finetune.steps`` of BPTT)."""
    return {"es": cfg.search.generations, "bptt": cfg.finetune.steps, "pes": cfg.finetune.steps,
            "nres": cfg.finetune.steps,
            "hybrid": cfg.search.generations + cfg.finetune.steps}[outer]


def build_trainer(cfg: Config, outer: str):
    """The trainer ``outer`` for ``cfg`` from the spec's initial genome (ES evaluates in this process)."""
    kwargs = {"es_generations": cfg.search.generations} if outer == "hybrid" else {}
    return make_trainer(outer, cfg, **kwargs)


@dataclass
class TrainResult:
    run_id: str
    status: str                          # FINISHED or KILLED (stopped by a signal, checkpoint written)
    step: int                            # steps done
    steps: int                           # the run's total
    heldout_loss: Optional[float]        # of trainer.best() at the last step (FINISHED)
    checkpoint: Path
    stopped_by: str = ""                 # "SIGINT" / "SIGTERM"
    history: list[dict[str, float]] = field(default_factory=list)
    trainer: Any = None
    ui_command: str = ""


def _logged_through(tracker: Tracker, run_id: str) -> int:
    """The last step of ``meta/loss`` already in the run (0 if none)."""
    history = tracker.client.get_metric_history(run_id, "meta/loss")
    return max((m.step for m in history), default=0)


def run_training(cfg: Config, outer: str, *, steps: Optional[int] = None, resume: Optional[dict[str, Any]] = None,
                 out: Callable[[str], None] = print, print_every: int = 0,
                 callbacks: tuple = ()) -> TrainResult:
    """Run ``outer`` on ``cfg`` for ``steps`` (default :func:`default_steps`), or continue the checkpoint
    ``resume`` (a dict from :func:`evoplast.checkpoint.load_checkpoint`) up to ``steps`` (default: its own).
    ``callbacks`` run after the built-in ones (tests use them)."""
    if outer not in OUTERS:
        raise ValueError(f"unknown outer trainer {outer!r}: expected one of {', '.join(OUTERS)}")
    check_device(cfg)                   # refused before a store is opened or a run created
    check_data(cfg)
    quiet_libraries()
    total = steps or (int(resume["steps"]) if resume else default_steps(cfg, outer))
    start = int(resume["step"]) if resume else 0
    flat = flatten(cfg)
    with StopFlag() as stop:
        tracker = Tracker(resolve_tracking_uri(cfg.tracking.tracking_uri))
        lock = None
        if resume:
            run_id = resume["mlflow_run_id"]
            info = tracker.get_run(run_id).info
            target = str(Path(cfg.checkpoint.dir) / run_id / "latest.pt")
            lock = RunLock(cfg.checkpoint.dir, run_id).acquire(         # one writer per run
                out, command=f"python scripts/train.py --resume {target}")
            try:
                refuse_finished(run_id, info.status, start, total, unit="steps", more=f"--steps {2 * start}",
                                script="scripts/train.py", target=target)
                run_id = tracker.resume_run(run_id)
                logged = _logged_through(tracker, run_id)
            except BaseException:
                lock.release()
                raise
        else:
            name = flat.get("tracking.run_name") or f"{flat.get('task.name')}-{flat.get('rule.name')}-{outer}-s{cfg.seed}"
            run_id = tracker.start_run(cfg.tracking.experiment, name, tags=run_tags(flat, outer),
                                       source="scripts/train.py", system_metrics=True)
            logged = 0
            try:
                lock = RunLock(cfg.checkpoint.dir, run_id).acquire(out)
            except BaseException:
                tracker.end("FAILED")
                raise
        try:
            if not resume:
                tracker.log_params({**applicable_params(flat, ray=False, command="train"), **environment_params(),
                                    "outer": outer})
                tracker.log_text(to_yaml(cfg), "config.yaml")
            trainer = build_trainer(cfg, outer)
            if resume:
                trainer.load_state_dict(resume["trainer"])
            ev = Evaluator(cfg)
        except BaseException as exc:
            lock.release()
            tracker.end("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
            raise
        path = Path(cfg.checkpoint.dir) / run_id / "latest.pt"
        out(f"evoplast: {'resuming' if resume else 'training'} run {run_id} | outer {outer} | "
            f"steps {start + 1}..{total} | {ev.spec.dim} numbers | checkpoint {path}")
        heldout = HeldOutCallback(ev, cfg.finetune.eval_every, last=total)
        extra = {"kind": CHECKPOINT_FORMAT, "outer": outer, "steps": total, "config_yaml": to_yaml(cfg),
                 "mlflow_run_id": run_id}
        cbs = [heldout,
               ProgressCallback(total, "step", stream=None if out is print else LineStream(out), every=print_every),
               TrackingCallback(tracker, logged_through=logged, end_run=False),
               CheckpointCallback(path, cfg.checkpoint.every, extra, before_save=tracker.flush), *callbacks]
        status = "FAILED"
        try:
            history = run_outer(trainer, steps=total, start=start, callbacks=cbs, stop=stop)
            step = start + len(history)
            status = "FINISHED" if step >= total else "KILLED"
            if status == "FINISHED":
                _log_genome(tracker, cfg, ev, trainer.best(), heldout.latest, step)
            return TrainResult(run_id, status, step, total, heldout.latest if status == "FINISHED" else None,
                               path, stop.name, history, trainer, tracker.ui_command())
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        except OSError as exc:          # a checkpoint or artifact write (full disk, vanished folder)
            kept = (f"the last checkpoint {path} is intact" if path.is_file() else "no checkpoint was written before")
            raise write_failed(exc, f"a checkpoint or artifact of run {run_id}", kept,
                               f"python scripts/train.py --resume {path}") from None
        finally:
            stop.immediate = True
            try:
                tracker.end(status)
            finally:
                lock.release()


def _log_genome(tracker: Tracker, cfg: Config, ev: Evaluator, genome: torch.Tensor, heldout: Optional[float],
                step: int) -> None:
    """``best_genome.pt`` (as evolve.py writes it, so export.py / evaluate.py read it) and the held-out loss."""
    with tempfile.TemporaryDirectory(prefix="evoplast-train-") as tmp:
        f = Path(tmp) / "best_genome.pt"
        torch.save(genome_record(genome, ev.spec, cfg, step, heldout), f)
        tracker.log_artifact(f)


__all__ = ["OUTERS", "TrainResult", "default_steps", "build_trainer", "run_training", "Interrupted"]
