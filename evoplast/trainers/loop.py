"""One outer loop for every trainer: ``step()`` after ``step()``, with callbacks around it.

What surrounds a run (progress, MLflow tracking, held-out evaluation, checkpoints) is a
:class:`Callback` (see :mod:`evoplast.runs.callbacks`); signals are a
:class:`~evoplast.runs.signals.StopFlag`: a SIGINT/SIGTERM lets the step in flight finish, then the loop
stops and the callbacks end with status ``"STOPPED"`` (a checkpoint is written, MLflow marks the run
KILLED). The loop itself knows nothing of MLflow, Ray or files.

Statuses passed to :meth:`Callback.on_end`:

* ``"FINISHED"``: all steps done;
* ``"STOPPED"``: stopped by the flag between two steps (the trainer's state is that of ``step``);
* ``"KILLED"``: a KeyboardInterrupt (e.g. a second Ctrl-C) in the middle of a step;
* ``"FAILED"``: any other exception. In the last two the trainer may be half-way through a step.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional, Protocol

from .base import OuterTrainer

STATUSES = ("FINISHED", "STOPPED", "KILLED", "FAILED")
CLEAN = ("FINISHED", "STOPPED")       # the trainer's state is that after step ``step``: it may be saved


class Callback(Protocol):
    """Hooks of :func:`run_outer`; each may be left as a no-op (see :class:`BaseCallback`)."""

    def on_start(self, trainer: OuterTrainer, start: int) -> None: ...

    def on_step(self, step: int, metrics: dict[str, Any], trainer: OuterTrainer) -> None:
        """After step ``step`` (1-based, counted over the whole run); may add entries to ``metrics``
        (those become part of the history row and of what later callbacks see)."""

    def on_end(self, status: str, step: int, trainer: OuterTrainer) -> None: ...


class BaseCallback:
    """A callback that does nothing; subclasses override what they need."""

    def on_start(self, trainer, start: int) -> None:
        pass

    def on_step(self, step: int, metrics: dict[str, Any], trainer) -> None:
        pass

    def on_end(self, status: str, step: int, trainer) -> None:
        pass


def run_outer(trainer: OuterTrainer, *, steps: int, start: int = 0, callbacks: Iterable[Callback] = (),
              stop: Optional[Any] = None) -> list[dict[str, Any]]:
    """Run ``trainer`` from step ``start`` to step ``steps`` (its state must be that after ``start``
    steps: fresh, or loaded from a checkpoint).

    Args:
        trainer: any :class:`~evoplast.trainers.base.OuterTrainer`.
        steps: the last step (the run's total, not the number of steps left).
        start: steps already done.
        callbacks: called in order at the start, after every step, at the end (also on an exception).
        stop: a :class:`~evoplast.runs.signals.StopFlag` (or anything with a ``signal`` attribute and an
            ``immediate`` one): while the loop runs, a signal only sets it; the loop stops before the
            next step.

    Returns:
        One row per step done here: ``{"step": s, **metrics}`` (the trainer's metrics plus what the
        callbacks added).
    """
    if steps < 0 or start < 0:
        raise ValueError(f"steps and start must be >= 0 (got steps={steps}, start={start})")
    callbacks = list(callbacks)
    history: list[dict[str, Any]] = []
    step, status = start, "FAILED"
    immediate = getattr(stop, "immediate", None)
    try:
        for cb in callbacks:
            cb.on_start(trainer, start)
        if stop is not None:
            stop.immediate = False        # from here a signal lets the step in flight finish
        while step < steps and (stop is None or stop.signal is None):
            metrics = dict(trainer.step())
            step += 1
            for cb in callbacks:
                cb.on_step(step, metrics, trainer)
            history.append({"step": step, **metrics})
        status = "FINISHED" if step >= steps else "STOPPED"
        if stop is not None and immediate is not None:
            stop.immediate = immediate    # after an exception it stays False: the clean-up is not cut short
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        _end_all(callbacks, status, step, trainer)
    return history


def _end_all(callbacks, status: str, step: int, trainer) -> None:
    """Every callback's ``on_end``, even when one fails (the first error is raised after the others)."""
    error: Optional[BaseException] = None
    for cb in callbacks:
        try:
            cb.on_end(status, step, trainer)
        except BaseException as exc:      # noqa: B902 (re-raised below)
            error = error or exc
    if error is not None:
        raise error
