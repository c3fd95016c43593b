"""MLflow tracking at the edge: one run per evolution, nested runs for fine-tuning and evaluation.

The tracking URI is, in order: the config's ``tracking.tracking_uri``, ``$MLFLOW_TRACKING_URI``,
``sqlite:///mlflow.db`` (a file in the working directory). A server URI is checked before any compute.
Everything goes through ``MlflowClient`` with an explicit run id (no global active run).
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

from ..errors import WorldError

DEFAULT_URI = "sqlite:///mlflow.db"
HIDDEN = "***"                       # what a password in a URI is shown (and stored) as
# Bounds on every MLflow HTTP call, unless the user set them: MLflow's own defaults (120 s, 7 retries with
# exponential backoff) make a lost server look like a hang of about 8 minutes.
HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "10", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2"}
# MLflow error codes that describe the request, not the store: they pass through unchanged
_REQUEST_ERRORS = {"RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS", "INVALID_PARAMETER_VALUE", "BAD_REQUEST",
                   "INVALID_STATE", "ENDPOINT_NOT_FOUND"}


class TrackingUnavailable(WorldError):
    """The tracking store cannot be used; the message says what to do."""


def split_credentials(uri: str) -> tuple[str, Optional[str], Optional[str]]:
    """``"http://u:p@host:5000" -> ("http://host:5000", "u", "p")``; URIs without a user part are unchanged."""
    try:
        parts = urllib.parse.urlsplit(uri)
        parts.port                                   # noqa: B018 (a bad port raises here)
    except ValueError as exc:
        raise TrackingUnavailable(f"tracking URI {redact_text(uri)!r} is not a valid URI ({exc})") from None
    if parts.scheme not in ("http", "https") or "@" not in parts.netloc:
        return uri, None, None
    userinfo, host = parts.netloc.rsplit("@", 1)
    user, _, password = userinfo.partition(":")
    clean = urllib.parse.urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return clean, urllib.parse.unquote(user), (urllib.parse.unquote(password) if _ else None)


def redact_uri(uri: str) -> str:
    """The URI as it may be shown, logged or stored: a password becomes ``***``."""
    try:
        clean, user, password = split_credentials(uri)
    except TrackingUnavailable:
        return redact_text(uri)
    if password is None:
        return uri
    parts = urllib.parse.urlsplit(clean)
    netloc = f"{urllib.parse.quote(user or '', safe='')}:{HIDDEN}@{parts.netloc}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def redact_text(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@`` in it replaced by ``***``."""
    return re.sub(r"(\w+://[^/\s:@]*:)[^/\s@]*@", rf"\1{HIDDEN}@", text)


def resolve_tracking_uri(configured: str = "") -> str:
    """The config's URI, else ``$MLFLOW_TRACKING_URI``, else the default. A configured URI whose password was
    hidden (a resumed run's stored config) takes the environment's URI when that is the same one."""
    configured = configured.strip()
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if configured and f":{HIDDEN}@" in configured and env and redact_uri(env) == configured:
        return env
    return configured or env or DEFAULT_URI


def bound_http_requests() -> dict[str, str]:
    """Set MLflow's HTTP timeout and retries for this process unless the user did; returns the values used.

    A user's value that MLflow cannot read (``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR=0.5``: MLflow wants an
    integer) raises :class:`TrackingUnavailable` here, with one line, not a traceback at the first request."""
    import mlflow.environment_variables as mlflow_env

    for key, value in HTTP_LIMITS.items():
        os.environ.setdefault(key, value)
    for key in (*HTTP_LIMITS, "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER"):
        variable = getattr(mlflow_env, key, None)
        if variable is None:                      # not in this MLflow version
            continue
        try:
            variable.get()
        except ValueError:
            raise TrackingUnavailable(f"${key}={os.environ[key]!r} cannot be read by MLflow: it must be "
                                      f"{'an integer' if variable.type is int else 'a number'}; fix or unset it") \
                from None
    return {key: os.environ[key] for key in HTTP_LIMITS}


def _first_line(exc: BaseException, limit: int = 200) -> str:
    text = redact_text(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
    return text if len(text) <= limit else text[:limit] + "..."


def check_tracking_uri(uri: str, timeout: float = 5.0) -> None:
    """Raise :class:`TrackingUnavailable` if ``uri`` cannot be used (server down, bad sqlite path)."""
    shown = redact_uri(uri)
    clean, user, password = split_credentials(uri)
    if uri.startswith(("http://", "https://")):
        request = urllib.request.Request(clean.rstrip("/") + "/health")
        if user is not None:
            import base64

            token = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as resp:
                if resp.status >= 400:
                    raise OSError(f"HTTP {resp.status}")
        except (OSError, urllib.error.URLError, ValueError) as exc:
            reason = redact_text(str(getattr(exc, "reason", exc)))
            raise TrackingUnavailable(f"cannot reach the MLflow tracking server at {shown} ({reason}); start it "
                                      f"(`mlflow server --host 127.0.0.1 --port 5000`) or unset "
                                      f"MLFLOW_TRACKING_URI / tracking.tracking_uri to use {DEFAULT_URI}") from None
    elif uri.startswith("sqlite:///") and uri != "sqlite:///":
        _check_sqlite(Path(uri[len("sqlite:///"):]), shown)
    elif uri.startswith("file:") or uri.startswith("/") or uri.startswith("."):
        if not os.environ.get("MLFLOW_ENABLE_FILE_STORE"):
            raise TrackingUnavailable(f"tracking URI {shown!r} is a plain file store, which MLflow 3 refuses; "
                                      f"use {DEFAULT_URI} or a server URI")
    else:
        _check_scheme(uri, shown)


# database schemes MLflow's SQLAlchemy store takes, and the Python module each needs (SQLAlchemy's defaults)
DB_DRIVERS = {"postgresql": ("psycopg2", "psycopg2-binary"), "postgresql+psycopg2": ("psycopg2", "psycopg2-binary"),
              "postgresql+psycopg": ("psycopg", "psycopg[binary]"), "postgresql+pg8000": ("pg8000", "pg8000"),
              "mysql": ("MySQLdb", "mysqlclient"), "mysql+mysqldb": ("MySQLdb", "mysqlclient"),
              "mysql+pymysql": ("pymysql", "pymysql"), "mssql": ("pyodbc", "pyodbc"),
              "mssql+pyodbc": ("pyodbc", "pyodbc"), "mssql+pymssql": ("pymssql", "pymssql")}
OTHER_SCHEMES = ("databricks", "databricks-uc", "uc")


def _check_scheme(uri: str, shown: str) -> None:
    """An unsupported scheme, or a database scheme whose driver is not installed, is one line (not MLflow's
    traceback, and not a store that is half created)."""
    import importlib.util

    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    if uri.lower().startswith("sqlite:"):
        raise TrackingUnavailable(f"tracking URI {shown!r} names no sqlite file (write sqlite:///PATH, e.g. "
                                  f"{DEFAULT_URI})")
    if uri in OTHER_SCHEMES:            # "databricks": the default Databricks profile
        return
    if scheme in DB_DRIVERS:
        module, package = DB_DRIVERS[scheme]
        if importlib.util.find_spec(module) is None:
            raise TrackingUnavailable(f"tracking URI {shown!r} needs the database driver {module!r}, which is not "
                                      f"installed (pip install {package}); or use {DEFAULT_URI}")
        return
    if scheme in OTHER_SCHEMES:
        return
    supported = "sqlite:///PATH, http(s)://HOST:PORT, postgresql://, mysql://, mssql://, databricks"
    if not scheme:
        raise TrackingUnavailable(f"tracking URI {shown!r} has no scheme (expected {supported}; a file: "
                                  f"sqlite:///{uri})")
    raise TrackingUnavailable(f"tracking URI {shown!r} has the scheme {scheme + '://'!r}, which evoplast cannot "
                              f"track to (expected {supported}); set tracking.tracking_uri or MLFLOW_TRACKING_URI")


def _check_sqlite(db: Path, shown: str) -> None:
    """A sqlite store that cannot work is one line at once, before MLflow retries for about two minutes: its
    folder missing or not writable, its path a folder, its file not readable and writable."""
    if not db.parent.is_dir():
        raise TrackingUnavailable(f"the MLflow store {shown} is in a directory that does not exist "
                                  f"({str(db.parent)!r}); create it or choose another tracking.tracking_uri")
    if db.is_dir():
        raise TrackingUnavailable(f"the MLflow store {shown} is a directory, not a sqlite file; choose a file, "
                                  f"e.g. sqlite:///{db / 'mlflow.db'}")
    import tempfile

    where = db
    try:
        if db.exists():
            os.close(os.open(db, os.O_RDWR))
        where = db.parent   # sqlite writes a journal beside the file: the folder must take new files too
        with tempfile.TemporaryFile(dir=db.parent):
            pass
    except OSError as exc:
        raise TrackingUnavailable(f"the MLflow store {shown} cannot be written ({exc.strerror or exc} in "
                                  f"{str(where)!r}); choose another tracking.tracking_uri") from None


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


def source_tags(source: str = "") -> dict[str, str]:
    """MLflow's own tags that ``mlflow.start_run`` would set and the low-level client does not: the script
    (``mlflow.source.name``), ``mlflow.source.type``, the evoplast checkout's git commit, and the user."""
    import getpass
    import sys

    tags = {"mlflow.source.type": "LOCAL",
            "mlflow.source.name": source or (Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python")}
    try:
        tags["mlflow.user"] = getpass.getuser()
    except (KeyError, OSError):
        pass
    env = environment_params()
    if "git.commit" in env:
        tags["mlflow.source.git.commit"] = env["git.commit"]
    return tags


def _metric_name(name: str) -> str:
    """MLflow allows letters, digits, ``_ - . : /`` and spaces in metric names; anything else goes."""
    return re.sub(r"[^\w\-. :/]", "", name)


@contextlib.contextmanager
def _folder_lock(folder: Path):
    """An exclusive ``flock`` on a folder (nothing is created): MLflow's table creation and migration are not
    safe against a second process doing the same at the same moment."""
    import fcntl

    fd = os.open(str(folder) or ".", os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _create_store(db: Path, shown_uri: str) -> None:
    """A new sqlite store, made whole or not at all: MLflow creates and migrates its tables in a temporary file
    beside ``db``, which then takes ``db``'s name. A failure part way (a full disk) leaves no ``db`` behind, so
    the next start creates it afresh instead of finding a half-migrated store."""
    from mlflow.tracking import MlflowClient

    tmp = db.with_name(f".{db.name}.creating-{os.getpid()}-{time.time_ns()}")
    try:
        client = _guarded(lambda: MlflowClient(tracking_uri=f"sqlite:///{tmp}"), shown_uri, "create store")
        _GuardedClient(client, shown_uri).search_experiments(max_results=1)
        _dispose_engine(f"sqlite:///{tmp}")
        os.replace(tmp, db)
    except OSError as exc:
        raise TrackingUnavailable(f"cannot create the MLflow store {shown_uri} ({exc.strerror or exc}); free space "
                                  f"or choose another tracking.tracking_uri") from None
    finally:
        _dispose_engine(f"sqlite:///{tmp}")
        for leftover in (tmp, tmp.with_name(tmp.name + "-journal")):
            leftover.unlink(missing_ok=True)


def _dispose_engine(uri: str) -> None:
    """Close MLflow's cached database engine of ``uri`` (its file is about to be renamed)."""
    try:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        engine = SqlAlchemyStore._engine_map.pop(uri, None)
    except (ImportError, AttributeError):       # another MLflow: nothing cached under that name
        return
    if engine is not None:
        engine.dispose()


def _guarded(fn, shown_uri: str, what: str):
    """``fn()``; a failure of the store itself becomes one line of :class:`TrackingUnavailable`, errors about
    the request (no such run ...) pass unchanged."""
    from mlflow.exceptions import MlflowException

    try:
        return fn()
    except MlflowException as exc:
        if exc.error_code in _REQUEST_ERRORS:
            raise
        failure = exc
    except (OSError, ConnectionError) as exc:
        failure = exc
    except Exception as exc:   # requests' and SQLAlchemy's errors, imported lazily by MLflow
        if type(exc).__module__.split(".")[0] not in ("requests", "urllib3", "sqlalchemy", "sqlite3", "alembic"):
            raise
        failure = exc
    raise TrackingUnavailable(f"the MLflow tracking store {shown_uri} failed ({what}: {_first_line(failure)})") from None


class _GuardedClient:
    """An ``MlflowClient`` whose failures of the store itself (server gone, timeouts, database errors) raise
    :class:`TrackingUnavailable` with one line; errors about the request (no such run ...) pass unchanged."""

    def __init__(self, client, shown_uri: str):
        self._client = client
        self._shown = shown_uri

    def __getattr__(self, name: str):
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            return _guarded(lambda: attr(*args, **kwargs), self._shown, name)

        return call


class Tracker:
    """One MLflow run, addressed by id.

    Every call to the store is bounded (:data:`HTTP_LIMITS`) and fails with :class:`TrackingUnavailable`.
    A ``user:password`` part of a server URI is passed to MLflow as ``MLFLOW_TRACKING_USERNAME`` /
    ``MLFLOW_TRACKING_PASSWORD`` (unless set) and never shown: :attr:`uri` is the URI without it.
    A fresh sqlite store is created under a lock on its folder, so runs started at once all start.
    """

    def __init__(self, uri: str):
        from mlflow.tracking import MlflowClient

        bound_http_requests()
        check_tracking_uri(uri)
        clean, user, password = split_credentials(uri)
        if user is not None:
            if password == HIDDEN:             # a stored config: the password was never written down
                password = os.environ.get("MLFLOW_TRACKING_PASSWORD")
                if password is None:
                    raise TrackingUnavailable(f"the password for {redact_uri(uri)} is not stored with the run; set "
                                              f"MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_URI with it)")
            os.environ.setdefault("MLFLOW_TRACKING_USERNAME", user)
            if password is not None:
                os.environ.setdefault("MLFLOW_TRACKING_PASSWORD", password)
        self.uri = clean
        self.shown_uri = redact_uri(uri)
        if clean.startswith("sqlite:///"):       # MlflowClient creates (or migrates) the store right away
            # MLflow keeps one database engine per URI string for the life of the process: a relative path
            # would reach the file of the folder where it was first opened, not of today's working directory
            path = clean[len("sqlite:///"):]
            client_uri = clean if path.startswith("/") else f"sqlite:///{Path(path).resolve()}"
            with _folder_lock(Path(path).parent):
                if not Path(path).exists():
                    _create_store(Path(path).resolve(), self.shown_uri)
                client = _guarded(lambda: MlflowClient(tracking_uri=client_uri), self.shown_uri, "create store")
                _GuardedClient(client, self.shown_uri).search_experiments(max_results=1)
        else:
            client = MlflowClient(tracking_uri=clean)
        self.client = _GuardedClient(client, self.shown_uri)
        self.run_id: Optional[str] = None
        self.lost = False                 # the store stopped answering during this run
        self.experiment_id: Optional[str] = None
        self._monitor = None              # MLflow's system metrics sampler, while a run records them
        self._pending: list = []          # metrics not yet written (one write per ~2 s, not per step)
        self._last_flush = time.monotonic()
        self.flush_seconds = 2.0

    def start_run(self, experiment: str, run_name: str = "", *, parent_run_id: str | None = None,
                  tags: dict[str, str] | None = None, source: str = "", system_metrics: bool = False) -> str:
        """Create a new run (nested under ``parent_run_id`` if given) and address it from now on.

        It carries MLflow's source, git and user tags (:func:`source_tags`; ``source`` names the script);
        with ``system_metrics`` it records ``system/...`` metrics until :meth:`end`."""
        from mlflow.exceptions import MlflowException

        exp = self.client.get_experiment_by_name(experiment)
        if exp is not None and exp.lifecycle_stage == "deleted":
            from ..errors import ConfigError

            raise ConfigError(f"tracking.experiment={experiment!r} is a deleted experiment in {self.shown_uri}; "
                              f"restore it (`mlflow experiments restore --experiment-id {exp.experiment_id}`), delete "
                              f"it for good (`mlflow gc`), or choose another tracking.experiment")
        if exp is not None:
            self.experiment_id = exp.experiment_id
        else:
            try:   # the UI shows it as model training (charts, params), not as a GenAI experiment
                self.experiment_id = self.client.create_experiment(
                    experiment, tags={"mlflow.experimentKind": "custom_model_development"})
                from .portable import make_relative   # a copied or moved default store keeps its artifacts

                make_relative(self.uri, self.experiment_id,
                              self.client.get_experiment(self.experiment_id).artifact_location)
            except MlflowException as exc:   # another run created it a moment ago
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                self.experiment_id = self.client.get_experiment_by_name(experiment).experiment_id
        tags = {**source_tags(source), **(tags or {})}
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        self.run_id = self.client.create_run(self.experiment_id, run_name=run_name or None, tags=tags).info.run_id
        if system_metrics:
            self.start_system_metrics()
        return self.run_id

    system_metrics_seconds = 5.0         # how often system metrics are sampled

    def start_system_metrics(self, interval: float | None = None) -> None:
        """Sample CPU, memory, disk and network (and GPUs, where MLflow can) into ``system/...`` metrics of
        this run every ``interval`` seconds, until :meth:`end`. Skipped quietly where psutil is missing."""
        try:
            import psutil  # noqa: F401
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
        except ImportError:
            return
        import logging

        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
        self._monitor = SystemMetricsMonitor(self.run_id, sampling_interval=interval or self.system_metrics_seconds,
                                             samples_before_logging=1,
                                             tracking_uri=self.uri)
        self._monitor.start()

    def stop_system_metrics(self) -> None:
        monitor, self._monitor = self._monitor, None
        if monitor is not None:
            try:
                monitor.finish()
            except Exception:   # the store may be gone: the run's status matters more
                pass

    def set_description(self, markdown: str) -> None:
        """The run's description on its page in the MLflow UI (``mlflow.note.content``, markdown)."""
        self.client.set_tag(self.run_id, "mlflow.note.content", markdown[:60000])

    def log_dict(self, data: dict, artifact_file: str) -> None:
        """``data`` as a JSON (or YAML, by the file's extension) artifact, written without a temporary file."""
        self.client.log_dict(self.run_id, data, artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_figure(self, figure, artifact_file: str) -> None:
        """A matplotlib figure as an image artifact; the figure is closed afterwards."""
        import matplotlib.pyplot as plt

        try:
            self.client.log_figure(self.run_id, figure, artifact_file, save_kwargs={"dpi": 110})
        finally:
            plt.close(figure)

    def log_table(self, columns: dict[str, list], artifact_file: str) -> None:
        """A table (``{column: values}``) that the MLflow UI shows in its evaluation view."""
        self.client.log_table(self.run_id, columns, artifact_file)

    def resume_run(self, run_id: str) -> str:
        """Continue an existing run (its status goes back to RUNNING)."""
        run = self.get_run(run_id)
        self.run_id, self.experiment_id = run_id, run.info.experiment_id
        self.client.update_run(run_id, status="RUNNING")
        return run_id

    def get_run(self, run_id: str):
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_run(run_id)
        except MlflowException:
            raise TrackingUnavailable(f"no MLflow run with id {run_id!r} in {self.shown_uri}; point at the store "
                                      f"that holds it with --tracking-uri URI or MLFLOW_TRACKING_URI (list runs: "
                                      f"`mlflow ui --backend-store-uri {self.shown_uri}`)") from None

    def log_params(self, params: dict[str, Any]) -> None:
        """Log params (100 per call); a password in any URI among the values is written as ``***``."""
        from mlflow.entities import Param

        items = [Param(k, redact_text(str(v))[:6000]) for k, v in params.items()]
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
        """Write the queued metrics (MLflow takes up to 1000 per batch); what fails to be written stays queued."""
        while self._pending:
            batch = self._pending[:1000]
            self.client.log_batch(self.run_id, metrics=batch)
            del self._pending[:len(batch)]
        self._last_flush = time.monotonic()

    def pending_metrics(self) -> list[list]:
        """The metrics not yet written, as plain ``[key, value, timestamp, step]`` lists (for a checkpoint)."""
        return [[m.key, float(m.value), int(m.timestamp), int(m.step)] for m in self._pending]

    def restore_pending_metrics(self, rows: list) -> None:
        """Queue metrics saved by :meth:`pending_metrics` (a run resumed after losing its server)."""
        from mlflow.entities import Metric

        self._pending.extend(Metric(str(k), float(v), int(t), int(s)) for k, v, t, s in rows)

    def set_tags(self, tags: dict[str, Any]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def end(self, status: str = "FINISHED", *, flush: bool = True) -> None:
        self.stop_system_metrics()
        try:
            if flush:
                self.flush()
        finally:
            self.client.set_terminated(self.run_id, status)

    def ui_command(self) -> str:
        """The exact command (and URL) to see this run in the MLflow UI."""
        if self.uri.startswith(("http://", "https://")):
            return f"open {self.uri.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{self.run_id}"
        return (f"mlflow ui --backend-store-uri {self.uri} --port 5000   then open "
                f"http://127.0.0.1:5000/#/experiments/{self.experiment_id}/runs/{self.run_id}")
