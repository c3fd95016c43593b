import os

import pytest
import torch

from evoplast.config import load_config

# Keep the suite's own numbers independent of how many cores the machine has.
torch.set_num_threads(min(2, os.cpu_count() or 1))

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def tiny_cfg():
    """A small sinusoid config that runs a whole lifetime in milliseconds."""
    return load_config(None, [
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
