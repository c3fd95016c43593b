import os

import pytest
import torch

from evoplast.config import load_config

# Keep the suite's own numbers independent of how many cores the machine has.
torch.set_num_threads(min(2, os.cpu_count() or 1))

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


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A private MLflow sqlite store and checkpoint directory for one test."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri
