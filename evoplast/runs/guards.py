"""What every run orchestrator does around its run, whatever the trainer (evolution, train, fine-tune):

- :class:`RunLock`: one writer per run. A lock file ``<checkpoint.dir>/<run id>/writer.lock`` beside the
  run's checkpoint says who writes the run (pid, host, start time); its mtime is a heartbeat, renewed by a
  thread every :data:`HEARTBEAT_SECONDS`. A second process that would write the same run is refused with
  :class:`RunLocked` (exit 1: the command is right, the world is busy; the same command works once the
  other writer ends). A lock whose process is gone (same host: the pid is dead, a zombie, or a newer process
  that reused it; another host: no heartbeat for :data:`STALE_SECONDS`) is taken over, with one line.
- :func:`refuse_finished`: ``--resume`` of a FINISHED run is one line (exit 2) that says how to continue it
  on purpose.
- :func:`end_orphaned_children`: nested runs (fine-tunes) left RUNNING by a process that died are ended
  as KILLED, so every nested run ends in a terminal state at the next resume or fine-tune at the latest.
- :class:`WriteFailed`: a checkpoint or artifact that cannot be written (full disk, vanished folder) is one
  line with the resume command (exit 1).

Imports neither torch, MLflow nor Ray.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Callable, Optional

from ..errors import UsageError, WorldError

LOCK_NAME = "writer.lock"
HEARTBEAT_SECONDS = 30.0        # how often a writer renews its lock's mtime
STALE_SECONDS = 300.0           # a lock of another host without a heartbeat for this long is taken over


class RunLocked(WorldError):
    """The run is being written by another live process (exit 1)."""


class WriteFailed(WorldError):
    """A checkpoint or an artifact could not be written (disk full, folder gone); the message ends with what
    to do (exit 1)."""


def lock_path(checkpoint_dir: str | Path, run_id: str) -> Path:
    """``<checkpoint_dir>/<run_id>/writer.lock``: beside the run's ``latest.pt``."""
    return Path(checkpoint_dir) / run_id / LOCK_NAME


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host exists and is not a zombie."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:            # another user's process: it exists
        return True
    try:                               # a zombie (ended, not yet reaped) holds nothing
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _read(path: Path) -> Optional[dict]:
    """The lock's holder, ``{}`` for an unreadable lock, None when there is no lock."""
    try:
        text = path.read_text(encoding="utf-8")
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        data = json.loads(text)
    except ValueError:
        return {"mtime": mtime}
    return {**data, "mtime": mtime} if isinstance(data, dict) else {"mtime": mtime}


def _process_start(pid: int) -> Optional[float]:
    """When process ``pid`` of this host started (seconds since the epoch), where /proc tells."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            ticks = int(fh.read().rsplit(")", 1)[-1].split()[19])
        with open("/proc/stat") as fh:
            boot = next(int(line.split()[1]) for line in fh if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def holder_alive(holder: dict, now: Optional[float] = None, stale_seconds: float = STALE_SECONDS) -> bool:
    """Whether the process a lock names still writes its run. On this host: its pid is alive, not a zombie,
    and started before the lock was written (else the pid was reused); a suspended writer still holds its
    lock. On another host: its heartbeat (the lock's mtime) is recent (the pid cannot be checked from here)."""
    now = time.time() if now is None else now
    if holder.get("host") == socket.gethostname():
        try:
            pid = int(holder.get("pid", -1))
        except (TypeError, ValueError):
            return False
        if not _pid_alive(pid):
            return False
        started, begun = holder.get("started"), _process_start(pid)
        return started is None or begun is None or begun <= float(started) + 2.0
    return now - float(holder.get("mtime", 0)) < stale_seconds


def _describe(holder: dict) -> str:
    started = holder.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(started))) if started else "an unknown time"
    return f"process {holder.get('pid', '?')} on {holder.get('host', '?')} (started {when})"


class RunLock:
    """The lock of one run, held by this process while it writes the run (a context manager).

    ``acquire`` is atomic against a second process doing the same at the same moment (an exclusive ``flock``
    on the run's folder around the check and the write)."""

    def __init__(self, checkpoint_dir: str | Path, run_id: str, *, heartbeat: float = HEARTBEAT_SECONDS,
                 stale_seconds: float = STALE_SECONDS):
        self.path = lock_path(checkpoint_dir, run_id)
        self.run_id = run_id
        self.heartbeat = heartbeat
        self.stale_seconds = stale_seconds
        self.held = False
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def acquire(self, out: Callable[[str], None] = print, *, command: str = "") -> "RunLock":
        """Take the lock, or raise :class:`RunLocked` (one line) when a live process holds it. A stale lock is
        taken over and ``out`` says so. ``command``: how to resume the run once it is free (default
        ``python scripts/evolve.py --resume RUN``)."""
        command = command or f"python scripts/evolve.py --resume {self.run_id}"
        import fcntl

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path.parent, os.O_RDONLY)
        except OSError as exc:
            raise WriteFailed(f"cannot write the lock of run {self.run_id} in {str(self.path.parent)!r} "
                              f"({exc.strerror or exc}); choose another checkpoint.dir or free space") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            holder = _read(self.path)
            if holder is not None and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
                raise RunLocked(f"run {self.run_id} is already being written by this process; it cannot be "
                                f"resumed twice at once")
            if holder is not None and holder_alive(holder, stale_seconds=self.stale_seconds):
                raise RunLocked(f"run {self.run_id} is being written by {_describe(holder)}; a second writer would "
                                f"corrupt it: wait for that process to end (or stop it with Ctrl-C / "
                                f"`kill -INT {holder.get('pid', '?')}`), then `{command}`")
            if holder is not None:
                out(f"evoplast: taking over the lock of run {self.run_id} left by {_describe(holder)}, which is no "
                    f"longer running ({self.path})")
            record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                      "run_id": self.run_id}
            tmp = self.path.with_name(f".{LOCK_NAME}.{os.getpid()}.tmp")
            try:
                tmp.write_text(json.dumps(record), encoding="utf-8")
                os.replace(tmp, self.path)
            except OSError as exc:
                tmp.unlink(missing_ok=True)
                raise WriteFailed(f"cannot write the lock of run {self.run_id} ({self.path}: "
                                  f"{exc.strerror or exc}); free space or choose another checkpoint.dir") from None
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        self.held = True
        if self.heartbeat:
            self._stop.clear()
            self._thread = threading.Thread(target=self._beat, name=f"evoplast-lock-{self.run_id[:8]}", daemon=True)
            self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            try:
                os.utime(self.path)
            except OSError:              # a full disk or a vanished folder: the run itself will say so
                pass

    def release(self) -> None:
        """Remove the lock if this process still holds it (never another process's lock)."""
        if not self.held:
            return
        self.held = False
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        holder = _read(self.path)
        if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
            try:
                self.path.unlink()
                self.path.parent.rmdir()       # a run that wrote no checkpoint (a fine-tune) leaves no folder
            except OSError:
                pass

    def __enter__(self) -> "RunLock":
        return self if self.held else self.acquire()

    def __exit__(self, *exc) -> bool:
        self.release()
        return False


def is_locked(checkpoint_dir: str | Path, run_id: str) -> bool:
    """Whether a live process holds the lock of ``run_id``."""
    holder = _read(lock_path(checkpoint_dir, run_id))
    return holder is not None and holder_alive(holder)


def refuse_finished(run_id: str, status: str, done: int, total: int, *, unit: str = "generations",
                    more: str = "", script: str = "scripts/evolve.py", target: str = "") -> None:
    """Raise :class:`UsageError` (exit 2) when ``--resume`` asks a FINISHED run for nothing more (``total`` is no
    more than the ``done`` steps): resuming would re-log its metrics and rewrite its artifacts. ``more``: the
    argument that asks for more steps (default ``search.generations=2*done``); ``target``: what ``--resume``
    takes (default the run id)."""
    if status == "FINISHED" and total <= done:
        more = more or f"search.generations={2 * done}"
        raise UsageError(f"run {run_id} is FINISHED ({done} {unit} done); nothing to resume. To continue it on "
                         f"purpose, ask for more {unit}: `python {script} --resume {target or run_id} {more}`"
                         + (f"; to fine-tune it: `python scripts/finetune.py --run-id {run_id}`"
                            if script == "scripts/evolve.py" else ""))


ORPHAN_TAG = "evoplast.stopped_by"
LOCKED_TAG = "evoplast.writer_lock"     # set at creation on runs whose writer holds a RunLock (fine-tunes)
YOUNG_SECONDS = 10.0                   # a run this young may not have taken its lock yet (it does at once)


def end_orphaned_children(tracker, parent_run_id: str, checkpoint_dir: str | Path,
                          out: Callable[[str], None] = print) -> list[str]:
    """End as KILLED the nested runs of ``parent_run_id`` that are still RUNNING although no process writes
    them (their writer died: SIGKILL, power loss). Only runs created with :data:`LOCKED_TAG` (their writer
    holds a :class:`RunLock`) are judged, and none younger than :data:`YOUNG_SECONDS`; other nested runs
    (an evaluation) are left alone. Returns the ids ended; ``out`` gets one line for each."""
    run = tracker.get_run(parent_run_id)
    children = tracker.client.search_runs([run.info.experiment_id],
                                          f"tags.mlflow.parentRunId = '{parent_run_id}' and "
                                          f"tags.`{LOCKED_TAG}` = 'true' and attributes.status = 'RUNNING'")
    ended = []
    for child in children:
        child_id = child.info.run_id
        young = time.time() - (child.info.start_time or 0) / 1000 < YOUNG_SECONDS
        if young or is_locked(checkpoint_dir, child_id):
            continue
        try:                            # the dead writer's lock, if it left one
            lock_path(checkpoint_dir, child_id).unlink()
            lock_path(checkpoint_dir, child_id).parent.rmdir()
        except OSError:
            pass
        tracker.client.set_tag(child_id, ORPHAN_TAG, "orphaned (its process ended without ending the run)")
        tracker.client.set_terminated(child_id, "KILLED")
        ended.append(child_id)
        out(f"evoplast: nested run {child_id} of run {parent_run_id} was left RUNNING by a process that no longer "
            f"runs; it is now KILLED")
    return ended


def write_failed(exc: OSError, what: str, last: str, command: str) -> WriteFailed:
    """The one line for a write that failed: what, why, what was kept (``last``), the resume ``command``."""
    why = exc.strerror or str(exc) or type(exc).__name__
    return WriteFailed(f"cannot write {what} ({why}); the run is FAILED; {last}; free space (or restore the folder) "
                       f"and continue with `{command}`")
