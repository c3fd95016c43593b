import os
import shutil
import sqlite3
import threading
from contextlib import closing
from pathlib import Path

import pytest
import torch

from evoplast.config import load_config

# Keep the suite's own numbers independent of how many cores the machine has; under pytest-xdist (the README's
# `-n 2`) each worker process takes one core.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, os.cpu_count() or 1))
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Ray's temp dir per worker: a test's cluster writes <dir>/ray/ray_current_cluster, which ray.num_actors=auto
    # reads as "a cluster started on this node"; another worker's cluster must not look like one
    os.environ["RAY_TMPDIR"] = os.path.join(os.environ.get("RAY_TMPDIR") or "/tmp", f"ray-{os.environ['PYTEST_XDIST_WORKER']}")
    os.makedirs(os.environ["RAY_TMPDIR"], exist_ok=True)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# What the suite's tests assume beyond the defaults (configs/default.yaml, which use PGPE, hebb on the output
# layer, evolved initial weights, mean over a batch and a fine-tune after the evolution): the model their numbers
# were chosen for, and never Ray or a BPTT fine-tune by accident (tests of either ask for it).
# Tests that need the default itself call load_config().
TEST_BASE = (
    "search.algorithm=cmaes", "search.generations=200", "search.center_learning_rate=null",
    "search.stdev_learning_rate=null", "rule.name=oja", "rule.eta_scale=0.01", "rule.batch_reduction=sum",
    "network.plastic_layers=[]", "genome.evolve_init_weights=false", "tracking.gain_every=10", "checkpoint.every=25",
    "finetune.after_evolution=false", "ray.num_actors=0",
)


def small_config(overrides=(), path=None):
    """``load_config(path, TEST_BASE + overrides)``: a test's config, saying what it needs beyond the defaults."""
    return load_config(path, [*TEST_BASE, *overrides])


@pytest.fixture
def tiny_cfg():
    """A small sinusoid config that runs a whole lifetime in milliseconds."""
    return small_config([
        "task.num_tasks=3", "task.batches_per_task=4", "task.batch_size=4", "task.query_size=8",
        "network.hidden=[8,8]", "evaluation.episodes=3", "evaluation.heldout_episodes=4",
        "search.popsize=8", "search.generations=3",
    ])


_BUILD: list[threading.Thread] = []


def pytest_collection_finish(session):
    """Start the fused CPU kernel's build now, in a thread (~20 s of the compiler on a fresh machine; a no-op
    when torch's extension cache has it): the tests that use it wait for it, the others run meanwhile. Not
    for ``--collect-only``, nor in pytest-xdist's controller (its workers run the tests)."""
    if session.config.option.collectonly or not session.items:
        return
    if session.config.getoption("numprocesses", None) and not hasattr(session.config, "workerinput"):
        return
    from evoplast import fused

    _BUILD.append(threading.Thread(target=fused.available, name="fused-kernel-build", daemon=True))
    _BUILD[0].start()


def pytest_sessionfinish(session):
    """Never leave while the build runs: a process that exits mid-build leaves torch's build lock behind, and
    every later process would wait on it (for 10 minutes, see :func:`evoplast.fused.clear_stale_lock`)."""
    for thread in _BUILD:
        thread.join()


_TEMPLATE: list[Path] = []      # an empty MLflow sqlite store, its tables made once per session


@pytest.fixture(scope="session", autouse=True)
def _mlflow_template(tmp_path_factory):
    _TEMPLATE.append(tmp_path_factory.mktemp("mlflow-template") / "mlflow.db")
    yield
    _TEMPLATE.clear()


def fresh_store(directory: Path) -> str:
    """The URI of an empty MLflow sqlite store ``directory/mlflow.db``: a copy of one made once per session
    (MLflow's table migrations take 5-10 s per new file on 2 cores), its Default experiment's artifacts
    moved to ``directory/mlruns/0`` as MLflow would have put them. An existing file is kept."""
    path = Path(directory) / "mlflow.db"
    if not path.exists():
        template = _TEMPLATE[0]
        if not template.exists():
            from mlflow.tracking import MlflowClient

            MlflowClient(f"sqlite:///{template}").search_experiments()      # creates the tables
        shutil.copyfile(template, path)
        with closing(sqlite3.connect(path)) as db, db:
            db.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
                       (str(Path(directory).resolve() / "mlruns" / "0"),))
    return f"sqlite:///{path}"


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A private MLflow sqlite store and checkpoint directory for one test (the working directory)."""
    monkeypatch.chdir(tmp_path)
    uri = fresh_store(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri
