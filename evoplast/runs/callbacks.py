"""Callbacks of :func:`evoplast.trainers.loop.run_outer`: progress, MLflow tracking, held-out evaluation,
checkpoints. Each has one job; a run composes them (``scripts/train.py``, :mod:`evoplast.runs.finetune`).

Metric names are grouped by ``/`` and are the same for every trainer (:func:`metric_name`):
``meta/loss``, ``meta/grad_norm``, ``speed/step_seconds``, ``speed/lifetimes``, ``heldout/loss``, ...
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Optional, Union

from ..trainers.loop import CLEAN, BaseCallback

# a trainer's metric -> its MLflow name; a name that has a '/' already is kept, any other goes under meta/
METRIC_NAMES = {"meta_loss": "meta/loss", "best_loss": "meta/best_loss", "grad_norm": "meta/grad_norm",
                "skipped": "meta/skipped", "nonfinite": "meta/nonfinite", "stepsize": "search/stepsize",
                "phase": "meta/phase", "lifetimes": "speed/lifetimes", "seconds": "speed/step_seconds"}


def metric_name(key: str) -> str:
    """``"meta_loss" -> "meta/loss"``, ``"seconds" -> "speed/step_seconds"``, ``"heldout/loss"`` kept."""
    return key if "/" in key else METRIC_NAMES.get(key, f"meta/{key}")


class HeldOutCallback(BaseCallback):
    """Scores ``trainer.best()`` on the held-out episodes every ``every`` steps and at step ``last``;
    adds ``heldout/loss`` (query MSE, or the task's loss) to that step's metrics.

    Args:
        evaluator: an :class:`~evoplast.evaluation.Evaluator` of the run's config (its spec is the trainer's).
        every: steps between evaluations (0: only at ``last``).
        last: the run's last step (evaluated whatever ``every``); None: none forced.
        genomes: ``trainer -> [k, D]`` to score k genomes at once (e.g. ``lambda t: t.current()``):
            ``heldout/loss_g{i}`` each and ``heldout/loss`` their minimum; default ``trainer.best()`` only.
    """

    def __init__(self, evaluator, every: int, last: Optional[int] = None,
                 genomes: Optional[Callable[[Any], Any]] = None):
        self.evaluator, self.every, self.last, self.genomes = evaluator, int(every), last, genomes
        self.latest: Optional[float] = None      # the latest held-out loss, for the progress line

    def loss(self, trainer) -> float:
        """The held-out loss of ``trainer.best()`` (one batched lifetime)."""
        return float(self.evaluator.score(trainer.best().reshape(1, -1)).loss[0])

    def on_step(self, step, metrics, trainer):
        if (self.every > 0 and step % self.every == 0) or step == self.last:
            if self.genomes is None:
                self.latest = metrics["heldout/loss"] = self.loss(trainer)
            else:
                losses = self.evaluator.score(self.genomes(trainer)).loss.tolist()      # [k], one lifetime
                metrics.update({f"heldout/loss_g{i}": v for i, v in enumerate(losses)})
                self.latest = metrics["heldout/loss"] = min(losses)


class ProgressCallback(BaseCallback):
    """One progress line per step (:class:`evoplast.runs.progress.Progress`): meta-loss, the latest held-out
    loss, seconds per step, elapsed and ETA.

    Args:
        total: the run's last step.
        what: the step's name in the line (``"step"``, ``"gen"``, ``"meta-step"``).
        stream, every: as :class:`~evoplast.runs.progress.Progress`.
    """

    def __init__(self, total: int, what: str = "step", *, stream=None, every: int = 0):
        self.total, self.what, self.stream, self.every = total, what, stream, every
        self.progress = None
        self.heldout = "-"
        self.t0 = 0.0
        self.start = 0

    def on_start(self, trainer, start):
        from .progress import Progress

        self.progress = Progress(self.total, self.what, stream=self.stream, every=self.every, start=start)
        self.t0, self.start = time.perf_counter(), start

    def values(self, step: int, metrics: dict[str, Any]) -> dict[str, str]:
        """The line's values after the step counter (a subclass may show others)."""
        return {"meta-loss": f"{metrics['meta_loss']:.3f}", "held-out": self.heldout,
                "s/step": f"{(time.perf_counter() - self.t0) / max(1, step - self.start):.3f}"}

    def on_step(self, step, metrics, trainer):
        if "heldout/loss" in metrics:
            self.heldout = f"{metrics['heldout/loss']:.3f}"
        self.progress.update(step, self.values(step, metrics))

    def note(self, text: str) -> None:
        """A line that stays above the bar (a checkpoint, a warning)."""
        if self.progress is not None:
            self.progress.note(text)

    def on_end(self, status, step, trainer):
        if self.progress is not None:
            self.progress.close()


class TrackingCallback(BaseCallback):
    """Every step's metrics to an MLflow run (an :class:`evoplast.runs.tracking.Tracker` with a run started or
    resumed), under :func:`metric_name`; ends the run with its status (STOPPED -> KILLED).

    Args:
        tracker: the run's tracker.
        logged_through: steps up to this one are in the run already (a resumed run that died after its
            last checkpoint): they are not logged twice.
        end_run: end the MLflow run in :meth:`on_end` (False: the caller ends it, e.g. after a report).
        select: ``{name: value} -> {name: value}``, the metrics of a step to log (default: all), e.g. without
            the ones that repeat another or never change (:func:`evoplast.runs.finetune.chart_metrics`).
    """

    def __init__(self, tracker, *, logged_through: int = 0, end_run: bool = True,
                 select: Optional[Callable[[dict[str, float]], dict[str, float]]] = None):
        self.tracker, self.logged_through, self.end_run, self.select = tracker, logged_through, end_run, select

    def on_step(self, step, metrics, trainer):
        if step > self.logged_through:
            row = {metric_name(k): float(v) for k, v in metrics.items()}
            self.tracker.log_metrics(self.select(row) if self.select is not None else row, step=step)

    def on_end(self, status, step, trainer):
        if self.end_run:
            self.tracker.end({"STOPPED": "KILLED"}.get(status, status))
        else:
            self.tracker.flush()


Extra = Union[dict[str, Any], Callable[[], dict[str, Any]]]


class CheckpointCallback(BaseCallback):
    """Saves ``{"trainer": trainer.state_dict(), "step": s, **extra}`` atomically
    (:func:`evoplast.runs.checkpoint.save_checkpoint`) to ``path`` every ``every`` steps and at the end of a
    run that finished or stopped between steps (never after an exception in the middle of a step).

    Args:
        path: the checkpoint file (``checkpoints/<run id>/latest.pt``), replaced each time.
        every: steps between checkpoints (0: only at the end).
        extra: more entries (a dict, or a function returning one, called at each save: e.g. the config's
            YAML, the MLflow run id).
        before_save: called before each save (e.g. ``tracker.flush``, so the run has every step saved).
    """

    def __init__(self, path: Union[str, Path], every: int = 0, extra: Extra = None,
                 before_save: Optional[Callable[[], None]] = None):
        self.path, self.every, self.extra, self.before_save = Path(path), int(every), extra or {}, before_save
        self.saved_step: Optional[int] = None

    def save(self, step: int, trainer) -> Path:
        from .checkpoint import save_checkpoint

        if self.before_save is not None:
            self.before_save()
        extra = self.extra() if callable(self.extra) else self.extra
        save_checkpoint(self.path, {**extra, "trainer": trainer.state_dict(), "step": int(step)})
        self.saved_step = step
        return self.path

    def on_step(self, step, metrics, trainer):
        if self.every > 0 and step % self.every == 0:
            self.save(step, trainer)

    def on_end(self, status, step, trainer):
        if status in CLEAN and self.saved_step != step:
            self.save(step, trainer)


__all__ = ["METRIC_NAMES", "metric_name", "HeldOutCallback", "ProgressCallback", "TrackingCallback",
           "CheckpointCallback"]
