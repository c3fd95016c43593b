"""One run of any outer trainer (es, bptt, pes, hybrid) in a :class:`~evoplast.runs.session.RunSession`, on
:func:`~evoplast.trainers.loop.run_outer` (``scripts/train.py``).

ES is the evolution run itself (:func:`evoplast.runs.evolve.run_evolution`): the same metric names
(``search/*``, ``heldout/*``, ``learning/*``), held-out measures, checkpoint format and report under
``train.py --outer es`` as under ``evolve.py``, and either command resumes the other's checkpoint. BPTT, PES
and the hybrid log ``meta/*``, ``speed/*`` and ``heldout/loss`` (:mod:`evoplast.runs.callbacks`).

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

from ..config import Config, flatten
from ..evaluation import Evaluator
from ..trainers import TRAINERS, make_trainer
from ..trainers.loop import run_outer
from .artifacts import genome_record
from .callbacks import HeldOutCallback, ProgressCallback, TrackingCallback
from .progress import LineStream, quiet_libraries
from .run_page import applicable_params, run_tags
from .session import RunSession, command_of
from .signals import Interrupted

OUTERS = tuple(TRAINERS)          # es, bptt, pes, hybrid, nres (scripts/train.py lists them too, before any import)


def default_steps(cfg: Config, outer: str) -> int:
    """Steps of a run when ``--steps`` is not given: generations (es), meta-steps (bptt, pes: one
    truncation each), both (hybrid: ``search.generations`` of ES, then ``finetune.steps`` of BPTT)."""
    return {"es": cfg.search.generations, "bptt": cfg.finetune.steps, "pes": cfg.finetune.steps,
            "nres": cfg.finetune.steps, "hybrid": cfg.search.generations + cfg.finetune.steps}[outer]


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


def run_training(cfg: Config, outer: str, *, steps: Optional[int] = None, resume: Optional[dict[str, Any]] = None,
                 out: Callable[[str], None] = print, print_every: int = 0,
                 callbacks: tuple = ()) -> TrainResult:
    """Run ``outer`` on ``cfg`` for ``steps`` (default :func:`default_steps`), or continue the checkpoint
    ``resume`` (a dict from :func:`evoplast.runs.checkpoint.load_checkpoint`) up to ``steps`` (default: its
    own). ``callbacks`` run after the built-in ones (tests use them)."""
    if outer not in OUTERS:
        raise ValueError(f"unknown outer trainer {outer!r}: expected one of {', '.join(OUTERS)}")
    if outer == "es" or (resume is not None and command_of(resume) == "evolve"):
        return _run_es(cfg, steps=steps, resume=resume, out=out, print_every=print_every, callbacks=callbacks)
    quiet_libraries()
    total = steps or (int(resume["steps"]) if resume else default_steps(cfg, outer))
    with RunSession(cfg, "train", out=out) as session:
        cfg = session.cfg
        flat = flatten(cfg)
        if resume:
            session.resume(resume, total=total)
            logged = session.logged_through("meta/loss")
        else:
            name = flat.get("tracking.run_name") or f"{flat.get('task.name')}-{flat.get('rule.name')}-{outer}-s{cfg.seed}"
            session.start(name, tags=run_tags(flat, outer), source="scripts/train.py",
                          params={**applicable_params(flat, ray=False, command="train"), "outer": outer})
            logged = 0
        trainer = build_trainer(cfg, outer)
        if resume:
            trainer.load_state_dict(resume["trainer"])
        ev = Evaluator(cfg)
        start, path = session.step, session.checkpoint_path
        out(f"evoplast: {'resuming' if resume else 'training'} run {session.run_id} | outer {outer} | "
            f"steps {start + 1}..{total} | {ev.spec.dim} numbers | checkpoint {path}")
        heldout = HeldOutCallback(ev, cfg.finetune.eval_every, last=total)
        cbs = [heldout,
               ProgressCallback(total, "step", stream=None if out is print else LineStream(out), every=print_every),
               TrackingCallback(session.tracker, logged_through=logged, end_run=False),
               session.checkpoints(cfg.checkpoint.every, {"outer": outer, "steps": total}), *callbacks]
        try:
            history = run_outer(trainer, steps=total, start=start, callbacks=cbs, stop=session.stop)
        except OSError as exc:          # a checkpoint or artifact write (full disk, vanished folder)
            raise session.write_failed(exc, f"a checkpoint or artifact of run {session.run_id}") from None
        step = start + len(history)
        if step < total:                # stopped by a signal between two steps: the checkpoint is written
            session.status = "KILLED"
            session.tracker.set_tags({"evoplast.stopped_by": session.stop.name})
            return TrainResult(session.run_id, "KILLED", step, total, None, path, session.stop.name, history,
                               trainer, session.tracker.ui_command())
        session.stop.immediate = True
        try:
            _log_genome(session.tracker, cfg, ev, trainer.best(), heldout.latest, step)
        except OSError as exc:
            raise session.write_failed(exc, f"an artifact of run {session.run_id}") from None
        session.finish()
        return TrainResult(session.run_id, "FINISHED", step, total, heldout.latest, path, "", history, trainer,
                           session.tracker.ui_command())


def _run_es(cfg: Config, *, steps, resume, out, print_every, callbacks) -> TrainResult:
    """``--outer es``: the evolution run (:func:`~evoplast.runs.evolve.run_evolution`) for ``steps`` generations."""
    from .evolve import run_evolution

    steps = steps or (int(resume["steps"]) if resume is not None and "steps" in resume else None)
    if steps is not None:
        cfg = cfg.replace(**{"search.generations": int(steps)})
    start = int(resume["trainer"].get("generation", 0)) if resume is not None else 0
    result = run_evolution(cfg, resume=resume, out=out, print_every=print_every, callbacks=callbacks)
    return TrainResult(result.run_id, result.status, result.generations, cfg.search.generations,
                       result.report.get("loss") if result.status == "FINISHED" else None, result.checkpoint,
                       result.stopped_by, result.history[start:], result.trainer, result.ui_command)


def _log_genome(tracker, cfg: Config, ev: Evaluator, genome: torch.Tensor, heldout: Optional[float],
                step: int) -> None:
    """``best_genome.pt`` (as evolve.py writes it, so export.py / evaluate.py read it) and the held-out loss."""
    with tempfile.TemporaryDirectory(prefix="evoplast-train-") as tmp:
        f = Path(tmp) / "best_genome.pt"
        torch.save(genome_record(genome, ev.spec, cfg, step, heldout), f)
        tracker.log_artifact(f)


__all__ = ["OUTERS", "TrainResult", "default_steps", "build_trainer", "run_training", "Interrupted"]
