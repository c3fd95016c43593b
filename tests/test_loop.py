"""One outer loop for every trainer (run_outer + callbacks) and scripts/train.py: exact resume after a
SIGINT, every step logged once, the same metric names for every trainer, one-line errors."""

from __future__ import annotations

import os
from pathlib import Path
import signal

import pytest
import torch

from evoplast.runs.checkpoint import load_checkpoint
from evoplast.trainers import METRICS
from evoplast.runs.callbacks import CheckpointCallback, metric_name
from evoplast.trainers.loop import BaseCallback, run_outer
from .conftest import small_config
from .scripts import error_line, load, run

TINY = ["task.num_tasks=3", "task.batches_per_task=4", "task.batch_size=4", "task.query_size=8",
        "network.hidden=[8,8]", "evaluation.episodes=3", "evaluation.heldout_episodes=4", "search.popsize=8",
        "search.generations=2", "finetune.steps=2", "finetune.episodes=2", "finetune.eval_every=2",
        "checkpoint.every=3"]
TOTAL, CUT = 5, 2           # steps of a run; the step after which it is interrupted


def same(a, b, where="state"):
    """``a`` and ``b`` equal bit for bit (tensors by ``torch.equal``), timings aside."""
    if isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            if not (k == "seconds" or str(k).endswith("_per_s")):      # wall-clock timings differ
                same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    else:
        assert a == b or (a != a and b != b), (where, a, b)


class SigintAfter(BaseCallback):
    """Sends this process SIGINT after step ``n`` (as Ctrl-C would)."""

    def __init__(self, n):
        self.n = n

    def on_step(self, step, metrics, trainer):
        if step == self.n:
            os.kill(os.getpid(), signal.SIGINT)


# ---- run_outer with a fake trainer: order, statuses, checkpoints ----

class Counter:
    name = "counter"

    def __init__(self, fail_at=None):
        self.n, self.fail_at = 0, fail_at

    def step(self):
        if self.n + 1 == self.fail_at:
            raise RuntimeError("boom")
        self.n += 1
        return {"meta_loss": float(self.n), "lifetimes": 1.0, "seconds": 0.0}

    def state_dict(self):
        return {"n": self.n}

    def load_state_dict(self, state):
        self.n = state["n"]

    def best(self):
        return torch.zeros(1)


class Recorder(BaseCallback):
    def __init__(self):
        self.calls = []

    def on_start(self, trainer, start):
        self.calls.append(("start", start))

    def on_step(self, step, metrics, trainer):
        metrics["heldout/loss"] = -step
        self.calls.append(("step", step))

    def on_end(self, status, step, trainer):
        self.calls.append((status, step))


def test_run_outer_calls_back_in_order_and_checkpoints_only_clean_states(tmp_path):
    rec = Recorder()
    history = run_outer(Counter(), steps=3, start=0, callbacks=[rec])
    assert rec.calls == [("start", 0), ("step", 1), ("step", 2), ("step", 3), ("FINISHED", 3)]
    assert history == [{"step": s, "meta_loss": float(s), "lifetimes": 1.0, "seconds": 0.0, "heldout/loss": -s}
                       for s in (1, 2, 3)]
    path = tmp_path / "c.pt"
    rec, trainer = Recorder(), Counter(fail_at=3)
    with pytest.raises(RuntimeError, match="boom"):
        run_outer(trainer, steps=5, callbacks=[rec, CheckpointCallback(path, every=0, extra={"k": 1})])
    assert rec.calls[-1] == ("FAILED", 2) and not path.exists()     # a failed step is never saved
    trainer = Counter()
    trainer.load_state_dict({"n": 2})
    run_outer(trainer, steps=4, start=2, callbacks=[CheckpointCallback(path, every=0, extra={"k": 1})])
    data = load_checkpoint(path)
    assert (data["trainer"], data["step"], data["k"]) == ({"n": 4}, 4, 1)
    with pytest.raises(ValueError, match="steps and start"):
        run_outer(Counter(), steps=-1)


def test_metric_names_are_grouped():
    assert [metric_name(k) for k in METRICS] == ["meta/loss", "speed/lifetimes", "speed/step_seconds"]
    assert metric_name("heldout/loss") == "heldout/loss" and metric_name("grad_norm") == "meta/grad_norm"


# ---- run_training: straight == interrupted + resumed, for es, bptt, pes ----

@pytest.mark.parametrize("outer", ["bptt", "pes", "nres", "es"])
def test_sigint_then_resume_equals_a_straight_run_and_logs_every_step_once(outer, store):
    from mlflow.tracking import MlflowClient

    from evoplast.runs.train import run_training

    cfg = small_config(TINY)
    quiet = lambda line: None   # noqa: E731
    straight = run_training(cfg, outer, steps=TOTAL, out=quiet)
    assert straight.status == "FINISHED" and straight.heldout_loss is not None

    first = run_training(cfg, outer, steps=TOTAL, out=quiet, callbacks=(SigintAfter(CUT),))
    assert (first.status, first.step, first.stopped_by) == ("KILLED", CUT, "SIGINT")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler      # handlers given back
    checkpoint = load_checkpoint(first.checkpoint)
    assert (checkpoint["step"], checkpoint["outer"], checkpoint["mlflow_run_id"]) == (CUT, outer, first.run_id)
    client = MlflowClient(store)
    assert client.get_run(first.run_id).info.status == "KILLED"

    resumed = run_training(cfg, outer, resume=checkpoint, out=quiet)     # a fresh trainer, loaded
    assert (resumed.status, resumed.run_id, resumed.step) == ("FINISHED", first.run_id, TOTAL)
    same(straight.trainer.state_dict(), resumed.trainer.state_dict())
    torch.testing.assert_close(straight.trainer.best(), resumed.trainer.best(), rtol=0, atol=0)
    assert resumed.heldout_loss == straight.heldout_loss
    assert [h["meta_loss"] for h in straight.history[CUT:]] == [h["meta_loss"] for h in resumed.history]

    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["outer"] == outer
    names = set(run.data.metrics)
    assert not any("_" in n.split("/")[0] or "/" not in n for n in names if not n.startswith("system/")), names
    if outer == "es":       # the evolution run itself: evolve.py's names, curve and report (one ES in every command)
        assert run.info.run_name == f"sinusoid-oja-{cfg.search.algorithm}-s0"
        for name in ("search/best", "search/median", "search/stepsize", "speed/generation_seconds"):
            assert sorted(m.step for m in client.get_metric_history(first.run_id, name)) == list(range(1, TOTAL + 1))
        heldout = client.get_metric_history(first.run_id, "heldout/loss")
        assert sorted(m.step for m in heldout) == list(range(0, TOTAL + 1))
        assert {m.step: m.value for m in heldout}[TOTAL] == pytest.approx(straight.heldout_loss)
        assert {"learning/gain", "learning/episode_gain", "summary/recommended_loss"} <= names
        assert not any(n.startswith("meta/") for n in names), names
        assert "best_genome.pt" in {a.path for a in client.list_artifacts(first.run_id)}
        return
    assert run.info.run_name == f"sinusoid-oja-{outer}-s0"
    for name in ("meta/loss", "speed/step_seconds", "speed/lifetimes"):
        assert sorted(m.step for m in client.get_metric_history(first.run_id, name)) == list(range(1, TOTAL + 1))
    heldout = client.get_metric_history(first.run_id, "heldout/loss")
    assert sorted(m.step for m in heldout) == [2, 4, 5]          # eval_every=2 and the last step
    assert {m.step: m.value for m in heldout}[TOTAL] == pytest.approx(straight.heldout_loss)
    assert {"meta/loss", "speed/step_seconds", "speed/lifetimes", "heldout/loss"} <= names
    assert "best_genome.pt" in {a.path for a in client.list_artifacts(first.run_id)}


# ---- scripts/train.py ----

def test_train_script_ctrl_c_prints_resume_and_resume_finishes(store, capsys, monkeypatch):
    import evoplast.runs.train as training

    build = training.build_trainer

    def interrupting(cfg, outer):           # Ctrl-C during step 2 of the first run only
        trainer = build(cfg, outer)
        step = trainer.step

        def step_and_sigint():
            m = step()
            if trainer.inner.step_count == CUT and not interrupting.done:
                interrupting.done = True
                os.kill(os.getpid(), signal.SIGINT)
            return m
        trainer.step = step_and_sigint
        return trainer
    interrupting.done = False
    monkeypatch.setattr(training, "build_trainer", interrupting)
    argv = ["--outer", "bptt", "--steps", str(TOTAL), *TINY]
    assert run("train", argv) == 130
    out = capsys.readouterr().out
    assert f"stopped by SIGINT after step {CUT}/{TOTAL}" in out
    resume = [line for line in out.splitlines() if line.startswith("Resume: ")]
    assert len(resume) == 1 and resume[0].startswith(f"Resume: MLFLOW_TRACKING_URI={store} python scripts/train.py "
                                                     f"--resume checkpoints/"), resume
    path = resume[0].split("--resume ", 1)[1]
    assert run("train", ["--resume", path]) == 0
    out = capsys.readouterr().out
    assert f"from step {CUT}" in out and f"{TOTAL} steps; held-out query MSE (4 episodes)" in out
    assert "python scripts/export.py --run-id" in out


@pytest.mark.parametrize("argv, message", [
    ([], "--outer is required"),
    (["--outer", "sgd"], "invalid choice: 'sgd'"),
    (["--outer", "pes", "--steps", "0"], "--steps must be >= 1"),
    (["--outer", "pes", "nonsense.key=1"], "nonsense"),
    (["--resume", "x.pt", "--config", "configs/default.yaml"], "drop --config"),
    (["--resume", "x.pt", "seed=3"], "seed cannot change when resuming"),
])
def test_train_script_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    assert run("train", argv) == 2
    line = error_line(capsys.readouterr().err)
    assert message in line, line


def test_train_script_offers_every_trainer():
    from evoplast.trainers import TRAINERS
    from evoplast.runs.train import OUTERS

    assert load("train").OUTERS == OUTERS == tuple(TRAINERS) == ("es", "bptt", "pes", "hybrid", "nres")


def test_train_script_missing_checkpoint_is_one_line_and_exit_1(tmp_path, capsys):
    assert run("train", ["--resume", str(tmp_path / "none.pt")]) == 1
    assert "does not exist" in error_line(capsys.readouterr().err)


class FailAt(BaseCallback):
    """A crash after step ``n`` was logged (the process dies between two checkpoints)."""

    def __init__(self, n):
        self.n = n

    def on_step(self, step, metrics, trainer):
        if step == self.n:
            raise RuntimeError("crash")


def test_a_crash_between_checkpoints_resumes_from_the_last_one_without_logging_a_step_twice(store):
    from mlflow.tracking import MlflowClient

    from evoplast.runs.train import run_training

    cfg = small_config(TINY)                      # checkpoint.every=3
    quiet = lambda line: None   # noqa: E731
    with pytest.raises(RuntimeError, match="crash"):
        run_training(cfg, "bptt", steps=TOTAL, out=quiet, callbacks=(FailAt(4),))
    [path] = Path("checkpoints").glob("*/latest.pt")
    checkpoint = load_checkpoint(path)
    assert checkpoint["step"] == 3                # the half-done step 4 was not saved
    client = MlflowClient(store)
    run_id = checkpoint["mlflow_run_id"]
    assert client.get_run(run_id).info.status == "FAILED"
    assert sorted(m.step for m in client.get_metric_history(run_id, "meta/loss")) == [1, 2, 3, 4]
    resumed = run_training(cfg, "bptt", resume=checkpoint, out=quiet)
    assert (resumed.status, resumed.step) == ("FINISHED", TOTAL)
    assert sorted(m.step for m in client.get_metric_history(run_id, "meta/loss")) == [1, 2, 3, 4, 5]
