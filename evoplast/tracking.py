"""MLflow tracking at the edge: one run per evolution, nested runs for fine-tuning and evaluation.

The tracking URI is, in order: the config's ``tracking.tracking_uri``, ``$MLFLOW_TRACKING_URI``,
``sqlite:///mlflow.db`` (a file in the working directory). A server URI is checked before any compute.
Everything goes through ``MlflowClient`` with an explicit run id (no global active run).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
import urllib.error
import urllib.request
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

DEFAULT_URI = "sqlite:///mlflow.db"


class TrackingUnavailable(RuntimeError):
    """The tracking store cannot be used; the message says what to do."""


def resolve_tracking_uri(configured: str = "") -> str:
    return configured.strip() or os.environ.get("MLFLOW_TRACKING_URI", "").strip() or DEFAULT_URI


def check_tracking_uri(uri: str, timeout: float = 5.0) -> None:
    """Raise :class:`TrackingUnavailable` if ``uri`` cannot be used (server down, bad sqlite path)."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as resp:
                if resp.status >= 400:
                    raise OSError(f"HTTP {resp.status}")
        except (OSError, urllib.error.URLError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TrackingUnavailable(f"cannot reach the MLflow tracking server at {uri} ({reason}); start it "
                                      f"(`mlflow server --host 127.0.0.1 --port 5000`) or unset "
                                      f"MLFLOW_TRACKING_URI / tracking.tracking_uri to use {DEFAULT_URI}") from None
    elif uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        if not db.parent.is_dir():
            raise TrackingUnavailable(f"the MLflow store {uri} is in a directory that does not exist "
                                      f"({str(db.parent)!r}); create it or choose another tracking.tracking_uri")
    elif uri.startswith("file:") or uri.startswith("/") or uri.startswith("."):
        if not os.environ.get("MLFLOW_ENABLE_FILE_STORE"):
            raise TrackingUnavailable(f"tracking URI {uri!r} is a plain file store, which MLflow 3 refuses; "
                                      f"use {DEFAULT_URI} or a server URI")


def environment_params() -> dict[str, str]:
    """Package versions and the git commit of the evoplast checkout, when there is one."""
    out = {}
    for pkg in ("evoplast", "torch", "evotorch", "ray", "mlflow", "numpy"):
        try:
            out[f"version.{pkg}"] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[f"version.{pkg}"] = "not installed"
    try:
        root = Path(__file__).resolve().parent.parent
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5)
        if commit.returncode == 0:
            out["git.commit"] = commit.stdout.strip()
            dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=5)
            out["git.dirty"] = str(bool(dirty.stdout.strip()))
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def _metric_name(name: str) -> str:
    """MLflow allows letters, digits, ``_ - . : /`` and spaces in metric names; anything else goes."""
    return re.sub(r"[^\w\-. :/]", "", name)


class Tracker:
    """One MLflow run, addressed by id."""

    def __init__(self, uri: str):
        from mlflow.tracking import MlflowClient

        check_tracking_uri(uri)
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        self.run_id: Optional[str] = None
        self.experiment_id: Optional[str] = None
        self._pending: list = []          # metrics not yet written (one write per ~2 s, not per step)
        self._last_flush = time.monotonic()
        self.flush_seconds = 2.0

    def start_run(self, experiment: str, run_name: str = "", *, parent_run_id: str | None = None,
                  tags: dict[str, str] | None = None) -> str:
        """Create a new run (nested under ``parent_run_id`` if given) and address it from now on."""
        exp = self.client.get_experiment_by_name(experiment)
        self.experiment_id = exp.experiment_id if exp is not None else self.client.create_experiment(experiment)
        tags = dict(tags or {})
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        self.run_id = self.client.create_run(self.experiment_id, run_name=run_name or None, tags=tags).info.run_id
        return self.run_id

    def resume_run(self, run_id: str) -> str:
        """Continue an existing run (its status goes back to RUNNING)."""
        run = self.get_run(run_id)
        self.run_id, self.experiment_id = run_id, run.info.experiment_id
        self.client.update_run(run_id, status="RUNNING")
        return run_id

    @classmethod
    def start(cls, uri: str, experiment: str, run_name: str = "", **kw) -> "Tracker":
        t = cls(uri)
        t.start_run(experiment, run_name, **kw)
        return t

    def get_run(self, run_id: str):
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_run(run_id)
        except MlflowException:
            raise TrackingUnavailable(f"no MLflow run with id {run_id!r} in {self.uri}; list runs with "
                                      f"`mlflow ui --backend-store-uri {self.uri}`") from None

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Queue metrics at ``step``; they are written at most every ``flush_seconds`` and on :meth:`flush`."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._pending.extend(Metric(_metric_name(k), float(v), now, int(step)) for k, v in metrics.items())
        if time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        """Write the queued metrics (MLflow takes up to 1000 per batch)."""
        pending, self._pending = self._pending, []
        for i in range(0, len(pending), 1000):
            self.client.log_batch(self.run_id, metrics=pending[i:i + 1000])
        self._last_flush = time.monotonic()

    def set_tags(self, tags: dict[str, Any]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def download_artifact(self, artifact_path: str, dst: str | Path) -> Path:
        return Path(self.client.download_artifacts(self.run_id, artifact_path, str(dst)))

    def end(self, status: str = "FINISHED") -> None:
        try:
            self.flush()
        finally:
            self.client.set_terminated(self.run_id, status)

    def ui_command(self) -> str:
        """The exact command (and URL) to see this run in the MLflow UI."""
        if self.uri.startswith(("http://", "https://")):
            return f"open {self.uri.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{self.run_id}"
        return (f"mlflow ui --backend-store-uri {self.uri} --port 5000   then open "
                f"http://127.0.0.1:5000/#/experiments/{self.experiment_id}/runs/{self.run_id}")
