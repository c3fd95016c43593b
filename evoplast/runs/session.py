"""The run session: what every command does around its work, in one place.

``scripts/evolve.py``, ``train.py``, ``finetune.py``, ``evaluate.py``, ``seeds.py`` and ``export.py`` each
open one :class:`RunSession`::

    with RunSession(cfg, "finetune", out=print) as session:      # preflight, the stop flag, the store
        session.start(name, tags=..., params=...)               # or session.resume(checkpoint)
        rows = run_outer(trainer, steps=..., start=session.step, stop=session.stop,
                         callbacks=[..., session.checkpoints(every, extra)])
        session.finish()                                         # FINISHED; else the exit decides

and gets the same behaviour whatever the command:

* **preflight** (:func:`~evoplast.runs.preflight.preflight`: device, memory, checkpoint folder, the task's
  data) before a store is opened or a run created: a bad config leaves nothing behind;
* **one stop flag** (:class:`~evoplast.runs.signals.StopFlag`): Ctrl-C / SIGTERM let the step in flight
  finish, the last checkpoint is written by the checkpoint callback, the run ends KILLED, and
  :attr:`resume_command` says how to continue;
* **one writer** (:class:`~evoplast.runs.guards.RunLock`), nested runs a dead process left RUNNING are
  ended, a FINISHED run is not resumed for nothing (:func:`~evoplast.runs.guards.refuse_finished`);
* **one checkpoint format** for every command: ``{"kind": "evoplast.run", "command", "outer", "step",
  "steps", "config_yaml", "mlflow_run_id", "trainer", ...}`` under ``<checkpoint.dir>/<run id>/latest.pt``
  (:func:`command_of` says which command resumes a file);
* **one end**: the MLflow run's status from how the ``with`` block ended (finished, signal, error), the lock
  released, a write that failed reported as one line with the resume command.

The work itself (which trainer, which callbacks, what report) stays in the command's module
(:mod:`~evoplast.runs.evolve`, :mod:`~evoplast.runs.train`, :mod:`~evoplast.runs.finetune`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

from ..config import Config, to_yaml
from .guards import LOCKED_TAG, RunLock, end_orphaned_children, refuse_finished, write_failed
from .preflight import preflight
from .progress import quiet_libraries
from .signals import Interrupted, StopFlag
from .tracking import Tracker, TrackingUnavailable, environment_params, redact_uri, resolve_tracking_uri

CHECKPOINT_KIND = "evoplast.run"
# which script resumes a checkpoint of each command
SCRIPTS = {"evolve": "scripts/evolve.py", "train": "scripts/train.py", "finetune": "scripts/finetune.py"}
# keys a resume may change, per command (anything else would make it another experiment)
RESUMABLE = {
    "evolve": ("search.generations", "ray.", "tracking.gain_every", "tracking.tracking_uri", "checkpoint.every",
               "device"),
    "train": ("tracking.", "device"),
    "finetune": ("tracking.", "device", "finetune.eval_every", "checkpoint.every"),
}


def command_of(checkpoint: dict[str, Any]) -> str:
    """Which command wrote ``checkpoint``: ``"evolve"``, ``"train"`` or ``"finetune"`` (files of older
    versions: ``kind == "evoplast.outer_run"`` is train.py's, anything else with a ``trainer`` evolve.py's)."""
    if checkpoint.get("kind") == CHECKPOINT_KIND and checkpoint.get("command") in SCRIPTS:
        return checkpoint["command"]
    if checkpoint.get("kind") == "evoplast.outer_run":
        return "train"
    return "evolve"


def resume_script(checkpoint: dict[str, Any]) -> str:
    """``python scripts/<command>.py --resume`` for ``checkpoint``."""
    return f"python {SCRIPTS[command_of(checkpoint)]} --resume"


def check_resume_overrides(command: str, overrides) -> None:
    """Raise :class:`~evoplast.config.ConfigError` (one line, exit 2) for an override that a resume of
    ``command`` may not change (:data:`RESUMABLE`)."""
    from ..config import ConfigError

    allowed = RESUMABLE[command]
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if not any(key == k or (k.endswith(".") and key.startswith(k)) for k in allowed):
            raise ConfigError(f"{key} cannot change when resuming (only {', '.join(allowed)} can); "
                              f"start a new run instead")


def resume_config(checkpoint: dict[str, Any], overrides: list[str] | tuple[str, ...],
                  command: Optional[str] = None) -> Config:
    """The checkpoint's config with the overrides that a resume of its command allows (:data:`RESUMABLE`:
    e.g. more generations of an evolution); ``command`` defaults to :func:`command_of` the checkpoint.

    Raises :class:`CheckpointError` when the checkpoint's own config does not load (a missing or changed
    config), :class:`ConfigError` when an override is not allowed or not valid.
    """
    import yaml

    from ..config import ConfigError, from_dict, merge_overrides, upgrade
    from .checkpoint import CheckpointError

    check_resume_overrides(command or command_of(checkpoint), overrides)
    missing = [k for k in ("config_yaml", "mlflow_run_id", "trainer") if k not in checkpoint]
    if missing:
        raise CheckpointError(f"the checkpoint has no {', '.join(missing)}: it cannot be resumed (start a new run)")
    try:
        data = upgrade(yaml.safe_load(checkpoint["config_yaml"]))
        from_dict(data)
    except (ConfigError, yaml.YAMLError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"the checkpoint's config does not load with this evoplast "
                              f"({str(exc).splitlines()[0][:200]}): it cannot be resumed (start a new run)") from None
    return from_dict(merge_overrides(data, overrides))


class RunSession:
    """One command's MLflow run, from its checks to its end status (a context manager).

    Args:
        cfg: the run's config (a password in its tracking URI is redacted before anything is logged).
        command: ``"evolve"``, ``"train"``, ``"finetune"``, ``"evaluate"``, ``"seeds"`` or ``"export"``.
        out: where one-line messages go.
        checks: run :func:`~evoplast.runs.preflight.preflight` on entry (False: the caller ran it already).
    """

    def __init__(self, cfg: Config, command: str, *, out: Callable[[str], None] = print, checks: bool = True):
        self.command, self.out = command, out
        if checks:
            preflight(cfg)
        self.uri = resolve_tracking_uri(cfg.tracking.tracking_uri)
        if redact_uri(cfg.tracking.tracking_uri) != cfg.tracking.tracking_uri:   # never logged or stored
            cfg = cfg.replace(**{"tracking.tracking_uri": redact_uri(cfg.tracking.tracking_uri)})
        self.cfg = cfg
        self.stop = StopFlag()
        self.tracker: Optional[Tracker] = None
        self.lock: Optional[RunLock] = None
        self.status: Optional[str] = None       # set by finish(); else decided by how the block ends
        self.started = False                    # a run was created or resumed: its status is ours to set
        self.step = 0                           # steps done before this session (a resume)
        self.checkpoint: Optional[dict[str, Any]] = None

    # ---- the context -------------------------------------------------------------------------------
    def __enter__(self) -> "RunSession":
        self.stop.__enter__()
        quiet_libraries()                       # before the store: no MLflow/alembic INFO lines
        try:
            self.tracker = Tracker(self.uri)
        except BaseException:
            self.stop.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        status = self.status or ("FINISHED" if kind is None else
                                 "KILLED" if kind is not None and issubclass(kind, KeyboardInterrupt) else "FAILED")
        try:
            if self.started and self.tracker is not None and self.tracker.run_id is not None:
                try:
                    self.tracker.end(status, flush=not self.tracker.lost)
                except TrackingUnavailable as lost:
                    self.out(f"evoplast: the run's status could not be set to {status} ({lost})")
        finally:
            if self.lock is not None:
                self.lock.release()
            self.stop.__exit__(kind, exc, tb)
        return False

    # ---- the run -----------------------------------------------------------------------------------
    @property
    def run_id(self) -> Optional[str]:
        return None if self.tracker is None else self.tracker.run_id

    @property
    def checkpoint_path(self) -> Path:
        """``<checkpoint.dir>/<run id>/latest.pt``."""
        return Path(self.cfg.checkpoint.dir) / str(self.run_id) / "latest.pt"

    @property
    def resume_command(self) -> str:
        """How to continue this run: ``python scripts/<command>.py --resume <checkpoint>``."""
        script = SCRIPTS.get(self.command, "scripts/evolve.py")
        return f"python {script} --resume {self.checkpoint_path}"

    def start(self, name: str, *, tags: dict[str, str], params: dict[str, Any], source: str = "",
              parent_run_id: Optional[str] = None, experiment: Optional[str] = None,
              system_metrics: bool = True, config_artifact: bool = True) -> str:
        """Create the MLflow run (nested under ``parent_run_id``: after ending the children a dead process
        left RUNNING), take its writer lock, log ``params`` (with the environment's) and ``config.yaml``."""
        tracker = self.tracker
        if parent_run_id:
            end_orphaned_children(tracker, parent_run_id, self.cfg.checkpoint.dir, self.out)
        run_id = tracker.start_run(experiment or self.cfg.tracking.experiment, name, parent_run_id=parent_run_id,
                                   tags={**tags, LOCKED_TAG: "true"}, source=source or SCRIPTS.get(self.command, ""),
                                   system_metrics=system_metrics)
        self.started = True
        self.lock = RunLock(self.cfg.checkpoint.dir, run_id).acquire(self.out, command=self.resume_command)
        tracker.log_params({**params, **environment_params()})
        if config_artifact:
            tracker.log_text(to_yaml(self.cfg), "config.yaml")
        return run_id

    def resume(self, checkpoint: dict[str, Any], *, total: int, unit: str = "steps", more: str = "") -> str:
        """Continue the run of ``checkpoint``: :meth:`claim` it, then :meth:`reopen` it; returns its id."""
        run_id = self.claim(checkpoint, total=total, unit=unit, more=more)
        self.reopen()
        return run_id

    def claim(self, checkpoint: dict[str, Any], *, total: int, unit: str = "steps", more: str = "",
              done: Optional[int] = None) -> str:
        """Take the writer lock of the run of ``checkpoint``, end the nested runs a dead process left RUNNING,
        refuse a FINISHED run that has no steps left (``total`` against ``done``, default the checkpoint's
        ``step``). The run itself is not touched yet (:meth:`reopen`)."""
        tracker = self.tracker
        run_id = checkpoint["mlflow_run_id"]
        info = tracker.get_run(run_id).info
        self.step = int(checkpoint.get("step", 0) if done is None else done)
        self.checkpoint = checkpoint
        target = str(Path(self.cfg.checkpoint.dir) / run_id / "latest.pt")
        script = SCRIPTS.get(self.command, "scripts/evolve.py")
        self.lock = RunLock(self.cfg.checkpoint.dir, run_id).acquire(
            self.out, command=f"python {script} --resume {target if self.command != 'evolve' else run_id}")
        end_orphaned_children(tracker, run_id, self.cfg.checkpoint.dir, self.out)
        if self.command == "evolve":
            refuse_finished(run_id, info.status, self.step, total)
        else:
            refuse_finished(run_id, info.status, self.step, total, unit=unit, more=more or f"--steps {2 * self.step}",
                            script=script, target=target)
        self._claimed = run_id
        return run_id

    def reopen(self) -> str:
        """Resume the claimed run in MLflow (from here its status is this session's to set)."""
        run_id = self.tracker.resume_run(self._claimed)
        self.started = True
        return run_id

    def logged_through(self, metric: str) -> int:
        """The last step of ``metric`` already in the run (0 if none): a resumed run does not log twice."""
        history = self.tracker.client.get_metric_history(self.run_id, metric)
        return max((m.step for m in history), default=0)

    def checkpoint_extra(self, **more) -> dict[str, Any]:
        """What every checkpoint holds besides the trainer's state and step."""
        return {"kind": CHECKPOINT_KIND, "command": self.command, "config_yaml": to_yaml(self.cfg),
                "mlflow_run_id": self.run_id, **more}

    def checkpoints(self, every: int, extra: Callable[[], dict[str, Any]] | dict[str, Any]):
        """The :class:`~evoplast.runs.callbacks.CheckpointCallback` of this run (``extra``: more entries,
        e.g. the total steps), writing :attr:`checkpoint_path` after flushing the run's queued metrics."""
        from .callbacks import CheckpointCallback

        def payload() -> dict[str, Any]:
            return self.checkpoint_extra(**(extra() if callable(extra) else extra))

        return CheckpointCallback(self.checkpoint_path, every, payload, before_save=self.tracker.flush)

    def write_failed(self, exc: OSError, what: str):
        """The one-line :class:`~evoplast.runs.guards.WriteFailed` of a checkpoint or artifact write."""
        path = self.checkpoint_path
        kept = f"the last checkpoint {path} is intact" if path.is_file() else "no checkpoint was written before"
        return write_failed(exc, what, kept, self.resume_command)

    def stopped(self, what: str, step: int) -> None:
        """End as KILLED after a signal between two steps (the checkpoint of ``step`` is written): say where it is
        and how to resume, then raise :class:`~evoplast.runs.signals.Interrupted` (the script exits 130)."""
        self.status = "KILLED"
        why = self.stop.name or "SIGINT"
        self.tracker.set_tags({"evoplast.stopped_by": why})
        self.out(f"evoplast: stopped at {what} {step} ({why}); checkpoint {self.checkpoint_path}; "
                 f"continue with `{self.resume_command}`")
        exc = Interrupted(self.stop.signal or 2)
        exc.reported = True
        raise exc

    def finish(self) -> None:
        """The work is done: the run ends FINISHED."""
        self.status = "FINISHED"


__all__ = ["CHECKPOINT_KIND", "RESUMABLE", "SCRIPTS", "RunSession", "check_resume_overrides", "command_of",
           "resume_config", "resume_script"]
