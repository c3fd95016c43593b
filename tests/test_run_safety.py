"""Runs that cannot be corrupted (issue 25): one writer per run, checkpoint reads that fall back on every read
error, write errors answered in one line, finished runs left finished, nested runs always ended, signals in
the fine-tune never lost. In-process: a second writer is a lock that names a live ``sleep`` process."""

import errno
import json
import os
import signal
import socket
import subprocess
import time

import pytest
import torch
from mlflow.tracking import MlflowClient

from evoplast.runs.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from evoplast.runs import evolve as run_module
from evoplast.runs.evolve import resolve_resume, resume_config, run_evolution
from evoplast.runs.guards import LOCKED_TAG, RunLock, RunLocked, WriteFailed, lock_path

from .test_bad_inputs import run_evolve
from .test_evolution import quiet, tiny
from .scripts import error_line

SMALL = ("search.generations=6", "network.hidden=[4,4]", "search.popsize=8", "tracking.gain_every=3",
         "checkpoint.every=3", "evaluation.sgd_lrs=[0.1]")     # one rate: a report of a second, not six


def _killed_run():
    part = run_evolution(tiny(*SMALL), out=quiet, stop_after=3)
    assert part.status == "KILLED"
    return part


@pytest.fixture
def sleeper():
    """A live process of this host that is not this one (its pid is written into a lock); killed by PID."""
    proc = subprocess.Popen(["sleep", "120"])
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def _write_lock(path, pid, host=None, age=0.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(), "started": time.time() - age}))
    os.utime(path, (time.time() - age, time.time() - age))


# ---------------------------------------------------------------------------------------------------------
# 1. one writer per run


def test_lock_refuses_a_live_writer_and_takes_over_a_dead_one(tmp_path, sleeper):
    path = lock_path(tmp_path, "r1")
    _write_lock(path, sleeper.pid)
    with pytest.raises(RunLocked, match=rf"^run r1 is being written by process {sleeper.pid} on "
                                        rf"{socket.gethostname()} \(started .* UTC\); a second writer"):
        RunLock(tmp_path, "r1").acquire(quiet)
    sleeper.kill()
    sleeper.wait()                      # reaped: its pid is dead
    lines = []
    lock = RunLock(tmp_path, "r1", heartbeat=0).acquire(lines.append)
    assert len(lines) == 1 and f"taking over the lock of run r1 left by process {sleeper.pid}" in lines[0]
    assert json.loads(path.read_text())["pid"] == os.getpid()
    with pytest.raises(RunLocked, match="already being written by this process"):
        RunLock(tmp_path, "r1").acquire(quiet)
    lock.release()
    assert not path.exists()
    # another host: its pid cannot be checked; a recent heartbeat holds, a stale one is taken over
    _write_lock(path, 1, host="elsewhere", age=10)
    with pytest.raises(RunLocked, match="process 1 on elsewhere"):
        RunLock(tmp_path, "r1").acquire(quiet)
    _write_lock(path, 1, host="elsewhere", age=3600)
    with RunLock(tmp_path, "r1", heartbeat=0).acquire(quiet):
        assert json.loads(path.read_text())["host"] == socket.gethostname()
    assert not path.exists()


def test_lock_heartbeat_renews_its_mtime(tmp_path):
    lock = RunLock(tmp_path, "r2", heartbeat=0.05).acquire(quiet)
    try:
        os.utime(lock.path, (0, 0))
        time.sleep(0.5)
        assert time.time() - lock.path.stat().st_mtime < 5
    finally:
        lock.release()


def test_a_second_resume_of_a_running_run_is_refused(store, capsys, sleeper):
    part = _killed_run()
    client = MlflowClient(store)
    rows = len(client.get_metric_history(part.run_id, "search/best"))
    before = part.checkpoint.read_bytes()
    _write_lock(part.checkpoint.parent / "writer.lock", sleeper.pid)     # another process writes the run
    code, out, err = run_evolve(["--resume", part.run_id], capsys)
    line = error_line(err)
    assert code == 1 and f"run {part.run_id} is being written by process {sleeper.pid}" in line, err
    assert f"then `python scripts/evolve.py --resume {part.run_id}`" in line
    assert client.get_run(part.run_id).info.status == "KILLED"                        # untouched
    assert len(client.get_metric_history(part.run_id, "search/best")) == rows
    assert part.checkpoint.read_bytes() == before
    sleeper.kill()
    sleeper.wait()                                                  # the writer died without removing its lock
    code, out, err = run_evolve(["--resume", part.run_id], capsys)
    assert code == 0, err[-2000:]
    assert f"taking over the lock of run {part.run_id} left by process {sleeper.pid}" in out
    assert sorted(m.step for m in client.get_metric_history(part.run_id, "search/best")) == list(range(1, 7))
    assert not (part.checkpoint.parent / "writer.lock").exists()    # released at the end


# ---------------------------------------------------------------------------------------------------------
# 2. checkpoint reads fall back to the MLflow copy on every read error


def test_every_damaged_local_checkpoint_falls_back_to_the_mlflow_copy(store, monkeypatch, tmp_path, capsys):
    part = _killed_run()
    intact = part.checkpoint.read_bytes()
    n = len(intact)
    damage = {f"cut at {f}": intact[:int(n * f)] for f in (1 / 3, 1 / 2, 0.9)}
    damage |= {"one byte short": intact[:-1], "one byte": intact[:1], "empty": b"",
               "garbage": os.urandom(n), "zip of garbage": b"PK\x03\x04" + os.urandom(200)}
    payload = {k: v for k, v in load_checkpoint(part.checkpoint).items() if k not in ("format", "version")}
    for name, data in damage.items():
        part.checkpoint.write_bytes(data)
        lines = []
        checkpoint, source = resolve_resume(part.run_id, out=lines.append)
        assert source == f"checkpoint/latest.pt of MLflow run {part.run_id}", name
        assert len(lines) == 1 and "using the copy in MLflow run" in lines[0], (name, lines)
        assert checkpoint["trainer"]["generation"] == 3, name
    for name, bad in {"trainer is a list": {**payload, "trainer": [1, 2]},
                      "no mlflow_run_id": {k: v for k, v in payload.items() if k != "mlflow_run_id"},
                      "config_yaml is bytes": {**payload, "config_yaml": b"x"}}.items():
        save_checkpoint(part.checkpoint, bad)
        lines = []
        checkpoint, source = resolve_resume(part.run_id, out=lines.append)
        assert source.startswith("checkpoint/latest.pt of MLflow run") and len(lines) == 1, name
    # unreadable (root reads any file, so the read itself fails here)
    part.checkpoint.write_bytes(intact)
    real = torch.load

    def denied(f, *a, **kw):
        if str(f) == str(part.checkpoint):
            raise PermissionError(errno.EACCES, "Permission denied", str(f))
        return real(f, *a, **kw)

    monkeypatch.setattr(torch, "load", denied)
    lines = []
    checkpoint, source = resolve_resume(part.run_id, out=lines.append)
    assert "cannot be read (Permission denied)" in lines[0] and checkpoint["trainer"]["generation"] == 3
    monkeypatch.setattr(torch, "load", real)
    # a file of no run with the wrong types inside: one line, not a traceback
    stray = save_checkpoint(tmp_path / "stray" / "latest.pt", {**payload, "trainer": [1, 2]})
    code, out, err = run_evolve(["--resume", str(stray)], capsys)
    assert code == 1 and "the checkpoint holds the wrong types (trainer is a list)" in error_line(err)
    # the resumed run from the MLflow copy finishes like an uninterrupted one
    part.checkpoint.write_bytes(intact[:n // 2])
    checkpoint, _ = resolve_resume(part.run_id, out=quiet)
    assert run_evolution(resume_config(checkpoint, []), resume=checkpoint, out=quiet).status == "FINISHED"


def test_when_neither_copy_works_it_is_one_line(store, capsys):
    part = _killed_run()
    intact = part.checkpoint.read_bytes()
    client = MlflowClient(store)
    artifacts = client.get_run(part.run_id).info.artifact_uri.removeprefix("file://")
    with open(os.path.join(artifacts, "checkpoint", "latest.pt"), "r+b") as fh:    # the store's own file
        fh.truncate(len(intact) // 2)
    part.checkpoint.write_bytes(intact[:len(intact) // 2])
    code, out, err = run_evolve(["--resume", part.run_id], capsys)
    line = error_line(err)
    assert code == 1 and f"the MLflow copy of the checkpoint of run {part.run_id} cannot be used either" in line
    with pytest.raises(CheckpointError):
        resolve_resume(part.run_id, out=quiet)


# ---------------------------------------------------------------------------------------------------------
# 3. write errors


def test_a_failed_checkpoint_write_ends_failed_with_the_resume_command(store, monkeypatch, code=errno.ENOSPC):
    real, calls = run_module.save_checkpoint, []

    def full_disk(path, payload):
        calls.append(path)
        if len(calls) == 2:             # the checkpoint after generation 6 (the one of generation 3 is written)
            raise OSError(code, os.strerror(code))
        return real(path, payload)

    monkeypatch.setattr(run_module, "save_checkpoint", full_disk)
    with pytest.raises(WriteFailed) as info:
        run_evolution(tiny(*SMALL), out=quiet)
    message = str(info.value)
    run_id = message.split("--resume ")[1].rstrip("`")
    assert os.strerror(code) in message and "the run is FAILED" in message and "\n" not in message
    assert f"the last checkpoint checkpoints/{run_id}/latest.pt (generation 3) is intact" in message
    assert MlflowClient(store).get_run(run_id).info.status == "FAILED"
    assert not (lock_path("checkpoints", run_id)).exists()
    monkeypatch.setattr(run_module, "save_checkpoint", real)
    checkpoint, _ = resolve_resume(run_id)
    resumed = run_evolution(resume_config(checkpoint, []), resume=checkpoint, out=quiet)
    assert resumed.status == "FINISHED" and resumed.generations == 6      # from generation 3 (exactness: test_evolution)


def test_a_failed_artifact_write_is_one_line_and_keeps_the_checkpoint(store, monkeypatch, capsys):
    def full_disk(*a, **kw):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(run_module, "_log_final_artifacts", full_disk)
    code, out, err = run_evolve(["search.generations=6", "network.hidden=[4,4]", "search.popsize=8",
                                 "finetune.after_evolution=false"], capsys)
    line = error_line(err)
    assert code == 1 and "cannot write an artifact of run" in line and "No space left on device" in line, err
    run_id = line.split("--resume ")[1].rstrip("`")
    assert f"(generation 6) is intact" in line
    assert MlflowClient(store).get_run(run_id).info.status == "FAILED"


# ---------------------------------------------------------------------------------------------------------
# 4. finished runs, nested runs, signals in the fine-tune


def test_resume_of_a_finished_run_is_refused_unless_it_asks_for_more(store, capsys):
    done = run_evolution(tiny(*SMALL), out=quiet)
    client = MlflowClient(store)
    rows = len(client.get_metric_history(done.run_id, "search/best"))
    before = done.checkpoint.read_bytes()
    code, out, err = run_evolve(["--resume", done.run_id], capsys)
    line = error_line(err)
    assert code == 2 and f"run {done.run_id} is FINISHED (6 generations done); nothing to resume" in line
    assert f"`python scripts/evolve.py --resume {done.run_id} search.generations=12`" in line
    assert len(client.get_metric_history(done.run_id, "search/best")) == rows
    assert done.checkpoint.read_bytes() == before and client.get_run(done.run_id).info.status == "FINISHED"
    checkpoint, _ = resolve_resume(done.run_id)
    more = run_evolution(resume_config(checkpoint, ["search.generations=9"]), resume=checkpoint, out=quiet)
    assert more.status == "FINISHED" and more.generations == 9


def test_a_nested_run_left_running_is_ended_at_the_next_resume(store, capsys):
    done = run_evolution(tiny(*SMALL), out=quiet)
    client = MlflowClient(store)
    exp = client.get_run(done.run_id).info.experiment_id
    # a fine-tune whose process was SIGKILLed two minutes ago: RUNNING, no lock
    nested = {"mlflow.parentRunId": done.run_id, LOCKED_TAG: "true"}
    old = int(time.time() * 1000) - 120_000
    orphan = client.create_run(exp, start_time=old, tags=nested).info.run_id
    evaluation = client.create_run(exp, start_time=old, tags={"mlflow.parentRunId": done.run_id}).info.run_id
    young = client.create_run(exp, tags=nested).info.run_id          # just created: its lock may come next
    code, out, err = run_evolve(["--resume", done.run_id], capsys)
    assert code == 2 and "is FINISHED" in error_line(err)
    assert f"nested run {orphan} of run {done.run_id} was left RUNNING" in out
    assert client.get_run(orphan).info.status == "KILLED"
    # an evaluation (no writer lock), a run just created, and a nested run a live process writes are left alone
    assert client.get_run(evaluation).info.status == client.get_run(young).info.status == "RUNNING"
    live = client.create_run(exp, start_time=old, tags=nested).info.run_id
    with RunLock("checkpoints", live, heartbeat=0).acquire(quiet):
        run_evolve(["--resume", done.run_id], capsys)
        assert client.get_run(live).info.status == "RUNNING"


def _finetune_cfg():
    return tiny("search.generations=3", "network.hidden=[4,4]", "search.popsize=8", "finetune.steps=6",
                "finetune.eval_every=3")


@pytest.mark.parametrize("sig,at", [(signal.SIGINT, 6), (signal.SIGTERM, 3)])
def test_a_signal_in_the_fine_tune_ends_it_killed(store, monkeypatch, sig, at):
    from evoplast.runs.finetune import run_finetune
    from evoplast.runs.signals import Interrupted
    from evoplast.trainers import bptt

    real, seen = bptt.BPTTTrainer.step, []

    def step(self):
        out = real(self)
        seen.append(signal.getsignal(sig))
        if len(seen) == at:                      # during the last step (SIGINT) or mid-run (SIGTERM)
            assert signal.getsignal(sig) not in (signal.SIG_DFL, signal.default_int_handler), \
                "the fine-tune has no stop flag: the signal would kill or escape"
            os.kill(os.getpid(), sig)
        return out

    monkeypatch.setattr(bptt.BPTTTrainer, "step", step)
    lines = []
    with pytest.raises(Interrupted):
        run_finetune(_finetune_cfg(), None, [], out=lines.append)
    run = MlflowClient(store).search_runs([MlflowClient(store).get_experiment_by_name("evoplast").experiment_id])[0]
    assert run.info.status == "KILLED" and run.data.tags["evoplast.stopped_by"] == signal.Signals(sig).name
    path = f"checkpoints/{run.info.run_id}/latest.pt"
    assert any(f"continue with `python scripts/finetune.py --resume {path}`" in line for line in lines), lines
    assert len(seen) == at                       # the step in flight finished, no further step
    assert load_checkpoint(path)["step"] == at   # the stopped state is saved
    assert not lock_path("checkpoints", run.info.run_id).exists()             # the lock is released


def test_a_fine_tune_stopped_by_sigint_and_resumed_equals_an_uninterrupted_one(store, monkeypatch):
    """The fine-tune has a stop flag and a checkpoint: stopped after meta-step 2 of 6, resumed in a fresh call,
    it ends where a straight run ends, bit for bit, with every meta-step's metrics logged once."""
    from evoplast.runs.finetune import run_finetune
    from evoplast.runs.signals import Interrupted
    from evoplast.trainers.loop import BaseCallback

    cfg = _finetune_cfg().replace(**{"checkpoint.every": 4})
    quiet = lambda line: None   # noqa: E731
    straight = run_finetune(cfg, None, [], out=quiet)

    class SigintAfter(BaseCallback):
        def on_step(self, step, metrics, trainer):
            if step == 2:
                os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Interrupted):
        run_finetune(cfg, None, [], out=quiet, callbacks=(SigintAfter(),))
    client = MlflowClient(store)
    stopped = [r for r in client.search_runs([client.get_experiment_by_name("evoplast").experiment_id])
               if r.info.run_id != straight.run_id][0]
    assert stopped.info.status == "KILLED"
    checkpoint = load_checkpoint(f"checkpoints/{stopped.info.run_id}/latest.pt")
    assert (checkpoint["command"], checkpoint["step"], checkpoint["steps"]) == ("finetune", 2, 6)

    resumed = run_finetune(cfg, None, [], out=quiet, resume=checkpoint)
    assert resumed.run_id == stopped.info.run_id
    assert client.get_run(resumed.run_id).info.status == "FINISHED"
    assert torch.equal(resumed.genome, straight.genome)
    assert resumed.after == straight.after and resumed.before == straight.before
    assert [h["meta_loss"] for h in resumed.history] == [h["meta_loss"] for h in straight.history]
    steps = sorted(m.step for m in client.get_metric_history(resumed.run_id, "meta/loss"))
    assert steps == list(range(1, 7))                                      # each meta-step once
    held = sorted(m.step for m in client.get_metric_history(resumed.run_id, "heldout/loss"))
    assert held == [0, 3, 6]


# ---------------------------------------------------------------------------------------------------------
# 5. --resume RUN --tracking-uri URI


def test_resume_with_the_tracking_uri_of_the_store_that_holds_the_run(store, monkeypatch, tmp_path, capsys):
    part = _killed_run()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/elsewhere.db")   # not the run's store
    code, out, err = run_evolve(["--resume", part.run_id, "--tracking-uri", store], capsys)
    assert code == 0, err[-2000:]
    assert MlflowClient(store).get_run(part.run_id).info.status == "FINISHED"
    assert not (tmp_path / "elsewhere.db").exists()
    # a store that does not hold the run: one line, nothing created
    other = run_evolution(tiny(*SMALL), out=quiet, stop_after=3)
    from .conftest import fresh_store

    (tmp_path / "empty").mkdir()
    empty = fresh_store(tmp_path / "empty")
    code, out, err = run_evolve(["--resume", other.run_id, "--tracking-uri", empty], capsys)
    assert code == 1 and f"no MLflow run with id {other.run_id!r}" in error_line(err)
    assert MlflowClient(store).get_run(other.run_id).info.status == "KILLED"


# ---------------------------------------------------------------------------------------------------------
# 6-9. refusals that need a store or a finished run (the rest are in test_bad_inputs.py's table)


def test_unsupported_scheme_through_the_environment_creates_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "s3://bucket/mlflow")
    code, out, err = run_evolve(list(SMALL), capsys)
    assert code == 1 and "tracking URI 's3://bucket/mlflow' has the scheme 's3://'" in error_line(err)
    assert list(tmp_path.iterdir()) == []


def test_a_deleted_experiment_is_one_line_and_no_run(store, capsys):
    client = MlflowClient(store)
    gone = client.create_experiment("gone")
    client.delete_experiment(gone)
    code, out, err = run_evolve([*SMALL, "tracking.experiment=gone"], capsys)
    line = error_line(err)
    assert code == 2 and "tracking.experiment='gone' is a deleted experiment" in line
    assert f"mlflow experiments restore --experiment-id {gone}" in line
    assert client.search_runs([gone]) == []


def test_top_k_beyond_the_population_is_refused(store, capsys):
    from . import scripts

    done = run_evolution(tiny(*SMALL), out=quiet)                  # population 8: 9 genomes with the center
    code = scripts.run("finetune", ["--run-id", done.run_id, "--top-k", "10"])
    line = error_line(capsys.readouterr().err)
    assert code == 2 and f"top-k 10 (--top-k or finetune.top_k) asks for more genomes than run {done.run_id} " \
                         f"holds: 9 (the center and a population of 8)" in line
    code = scripts.run("finetune", ["--checkpoint", str(done.checkpoint), "--top-k", "10"])
    assert code == 2 and "asks for more genomes than checkpoint" in error_line(capsys.readouterr().err)


def test_train_runs_have_one_writer_stay_finished_and_answer_write_errors(store, capsys, monkeypatch, sleeper):
    from evoplast.runs import callbacks
    from evoplast.runs.train import run_training

    from . import scripts
    from .conftest import small_config
    from .test_loop import TINY as LOOP, TOTAL

    cfg = small_config(LOOP)
    done = run_training(cfg, "bptt", steps=TOTAL, out=quiet)
    path = str(done.checkpoint)
    assert scripts.run("train", ["--resume", path]) == 2
    line = error_line(capsys.readouterr().err)
    assert f"run {done.run_id} is FINISHED ({TOTAL} steps done)" in line
    assert f"`python scripts/train.py --resume {path} --steps {2 * TOTAL}`" in line
    _write_lock(lock_path("checkpoints", done.run_id), sleeper.pid)
    assert scripts.run("train", ["--resume", path, "--steps", str(TOTAL + 1)]) == 1
    assert f"is being written by process {sleeper.pid}" in error_line(capsys.readouterr().err)
    # a full disk at the second checkpoint (step 3 of 5 is saved first)
    real, calls = callbacks.CheckpointCallback.save, []

    def save(self, step, trainer):
        calls.append(step)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, step, trainer)

    monkeypatch.setattr(callbacks.CheckpointCallback, "save", save)
    with pytest.raises(WriteFailed, match=r"No space left on device\); the run is FAILED; the last checkpoint "
                                          r"checkpoints/\w+/latest.pt is intact; .* continue with `python "
                                          r"scripts/train.py --resume checkpoints/\w+/latest.pt`$") as info:
        run_training(cfg, "bptt", steps=TOTAL, out=quiet)
    run_id = str(info.value).split("checkpoints/")[1].split("/")[0]
    assert MlflowClient(store).get_run(run_id).info.status == "FAILED"
    assert load_checkpoint(f"checkpoints/{run_id}/latest.pt")["step"] == 3


def test_a_reused_pid_does_not_hold_a_lock(tmp_path, sleeper):
    # the lock was written (by a process now dead) before the live process with that pid started
    _write_lock(lock_path(tmp_path, "r3"), sleeper.pid, age=3600)
    lines = []
    with RunLock(tmp_path, "r3", heartbeat=0).acquire(lines.append):
        assert "taking over the lock of run r3" in lines[0]


@pytest.mark.slow
def test_two_resumes_of_one_run_at_once_the_second_is_refused(store, tmp_path, capsys):
    """Finding 1 as a user meets it: a real process resumes the run; a second resume while it runs is refused,
    and every generation is logged once."""
    import sys

    from .conftest import REPO

    part = _killed_run()
    proc = subprocess.Popen([sys.executable, f"{REPO}/scripts/evolve.py", "--resume", part.run_id,
                             "search.generations=100000", "--print-every", "1000"], cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        for line in proc.stdout:
            if line.startswith("evoplast: resumed at generation 3"):
                break
        else:
            raise AssertionError(proc.stderr.read()[-2000:])
        code, out, err = run_evolve(["--resume", part.run_id], capsys)
        assert code == 1 and f"is being written by process {proc.pid}" in error_line(err)
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    client = MlflowClient(store)
    steps = [m.step for m in client.get_metric_history(part.run_id, "search/best")]
    assert sorted(steps) == list(range(1, max(steps) + 1))           # each generation once
    assert client.get_run(part.run_id).info.status == "KILLED"
    assert not (part.checkpoint.parent / "writer.lock").exists()


def test_a_store_in_a_folder_that_takes_no_new_file_is_refused_at_once(tmp_path, monkeypatch):
    import tempfile

    from evoplast.runs.tracking import TrackingUnavailable, check_tracking_uri

    (tmp_path / "mlflow.db").write_bytes(b"")          # the file opens for writing; its journal would not
    real = tempfile.TemporaryFile

    def read_only(*a, dir=None, **kw):
        if dir is not None and os.path.samefile(dir, tmp_path):
            raise PermissionError(errno.EROFS, os.strerror(errno.EROFS))
        return real(*a, dir=dir, **kw)

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    t0 = time.perf_counter()
    with pytest.raises(TrackingUnavailable, match=rf"cannot be written \(Read-only file system in '{tmp_path}'\)"):
        check_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    assert time.perf_counter() - t0 < 30          # a bound against retries (MLflow alone: ~107 s), not a speed claim


def test_a_store_that_fails_while_it_is_created_leaves_nothing_half_made(tmp_path, monkeypatch):
    """A full disk while MLflow creates and migrates a new sqlite store: one line, no mlflow.db (and no temporary
    file) left behind, so the next start creates the store whole instead of finding it half-migrated."""
    import sqlite3

    from mlflow.tracking import MlflowClient

    from evoplast.runs.tracking import Tracker, TrackingUnavailable

    monkeypatch.chdir(tmp_path)
    real = MlflowClient.search_experiments

    def full_disk(self, *args, **kwargs):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(MlflowClient, "search_experiments", full_disk)
    with pytest.raises(TrackingUnavailable, match="disk is full") as info:
        Tracker("sqlite:///mlflow.db")
    assert "\n" not in str(info.value) and list(tmp_path.iterdir()) == []
    monkeypatch.setattr(MlflowClient, "search_experiments", real)
    tracker = Tracker("sqlite:///mlflow.db")
    run_id = tracker.start_run("whole", "a run")
    tracker.end()
    assert tracker.client.get_run(run_id).info.status == "FINISHED"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db"]
