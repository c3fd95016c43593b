"""Faults around an evolution: unusable or corrupt checkpoints, a tracking server that goes away mid-run,
signals during set-up and during the final report, runs started at once on a fresh store."""

import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from evoplast.runs.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from evoplast.runs import evolve as run_module
from evoplast.runs.evolve import resolve_resume, resume_config, run_evolution
from evoplast.runs.tracking import HTTP_LIMITS, Tracker, TrackingUnavailable, bound_http_requests

from . import scripts
from .conftest import REPO
from .test_bad_inputs import run_evolve
from .test_evolution import TINY, quiet, tiny
from .test_scripts import _env, _free_port

SMALL = ("search.generations=6", "network.hidden=[4,4]", "search.popsize=8", "tracking.gain_every=3",
         "checkpoint.every=3")


def _killed_run(store):
    part = run_evolution(tiny(*SMALL), out=quiet, stop_after=2)
    assert MlflowClient(store).get_run(part.run_id).info.status == "KILLED"
    return part


def test_unusable_checkpoint_is_one_line_and_leaves_the_run_killed(store, tmp_path, capsys):
    part = _killed_run(store)
    client = MlflowClient(store)
    good = load_checkpoint(part.checkpoint)
    payload = {k: v for k, v in good.items() if k not in ("format", "version")}
    changed = yaml.safe_load(good["config_yaml"])
    changed["network"]["hidden"] = [5, 5]                 # the saved searcher state no longer fits
    unknown = yaml.safe_load(good["config_yaml"])
    unknown["network"]["width"] = 64                      # a key this evoplast does not know
    cases = {
        "no trainer": ({k: v for k, v in payload.items() if k != "trainer"}, "the checkpoint has no trainer"),
        "changed config": ({**payload, "config_yaml": yaml.safe_dump(changed)},
                           f"the checkpoint of run {part.run_id} does not fit its config"),
        "unknown key": ({**payload, "config_yaml": yaml.safe_dump(unknown)},
                        "the checkpoint's config does not load with this evoplast (unknown key 'network.width'"),
    }
    for name, (data, fragment) in cases.items():
        path = save_checkpoint(tmp_path / name.replace(" ", "_") / "latest.pt", data)
        code, out, err = run_evolve(["--resume", str(path)], capsys)
        lines = [line for line in err.splitlines() if line.startswith("evoplast:")]   # MLflow logs to stderr too
        assert code == 1 and len(lines) == 1 and fragment in lines[0], (name, out, err)
        assert "Traceback" not in err
        assert client.get_run(part.run_id).info.status == "KILLED", name    # not flipped to RUNNING or FAILED
    assert len(client.get_metric_history(part.run_id, "search/best")) == 2
    # the run's own checkpoint still resumes to the end
    checkpoint, _ = resolve_resume(part.run_id)
    assert run_evolution(resume_config(checkpoint, []), resume=checkpoint, out=quiet).status == "FINISHED"


def test_corrupt_local_checkpoint_falls_back_to_the_mlflow_copy(store):
    whole = run_evolution(tiny(*SMALL), out=quiet)
    part = _killed_run(store)
    intact = part.checkpoint.read_bytes()
    for target in (part.run_id, str(part.checkpoint)):
        part.checkpoint.write_bytes(intact[:len(intact) // 3])        # cut short, as by a full disk
        lines = []
        checkpoint, source = resolve_resume(target, out=lines.append)
        assert source == f"checkpoint/latest.pt of MLflow run {part.run_id}", target
        assert len(lines) == 1 and "is corrupt or truncated" in lines[0] and "using the copy in MLflow run" in lines[0]
        assert checkpoint["trainer"]["generation"] == 2
    resumed = run_evolution(resume_config(checkpoint, []), resume=checkpoint, out=quiet)
    assert resumed.status == "FINISHED" and torch.equal(resumed.center, whole.center)
    # a corrupt file that belongs to no run still says so in one line
    stray = part.checkpoint.parent.parent / "stray.pt"
    stray.write_bytes(b"PK\x03\x04 nothing")
    with pytest.raises(CheckpointError, match="is corrupt or truncated"):
        resolve_resume(str(stray))


# ---------------------------------------------------------------------------------------------------------
# a real MLflow server on 127.0.0.1, stopped by PID in the middle of a run


def _start_server(tmp_path, port, *, wait=True):
    """A real ``mlflow server`` on 127.0.0.1:``port`` over ``tmp_path/server.db``, in its own process group;
    returned once it answers /health (after ~6-8 s of imports on 2 cores), or at once with ``wait=False``
    (then :func:`_wait_for_server`)."""
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path}/server.db", "--default-artifact-root", str(tmp_path / "art"),
         "--workers", "1"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})   # no job-runner processes to start
    return _wait_for_server(server, port) if wait else server


def _wait_for_server(server, port):
    deadline = time.time() + 90
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return server
        except OSError:
            assert time.time() < deadline and server.poll() is None, "MLflow server did not start"
            time.sleep(0.5)


def _stop_server(server):
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)             # the server and its workers, by process group id
        server.wait(timeout=30)


def test_http_requests_are_bounded_unless_the_user_set_them(monkeypatch, tmp_path):
    for key in HTTP_LIMITS:
        monkeypatch.setenv(key, "x")          # so that the original value (or its absence) is restored after
        monkeypatch.delenv(key)
    assert bound_http_requests() == {"MLFLOW_HTTP_REQUEST_TIMEOUT": "10", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2"}
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2"
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "300")                    # the user's value is kept
    assert bound_http_requests()["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "300"
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0.5")             # MLflow reads an integer
    with pytest.raises(TrackingUnavailable, match=r"^\$MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR='0.5' cannot be read by "
                                                  r"MLflow: it must be an integer; fix or unset it$"):
        Tracker(f"sqlite:///{tmp_path}/mlflow.db")
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_losing_the_server_mid_run_ends_fast_with_a_local_checkpoint_and_resumes(tmp_path, monkeypatch, capsys):
    """A run against a real MLflow server on 127.0.0.1 (with a password in its URI) loses the server in
    generation 40: it ends within 30 s with a local checkpoint; once the server is back,
    ``evolve.py --resume`` finishes the same run on it, exactly as if never interrupted."""
    monkeypatch.chdir(tmp_path)
    for key, value in HTTP_LIMITS.items():
        monkeypatch.setenv(key, value)                    # what evoplast sets; restored after the test
    # MLflow's backoff between the 2 retries is 4 s + 8 s; half of it (the factor is an integer) keeps the
    # test short; the number of retries, evoplast's bound, is checked by test_http_requests_are_bounded_...
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    port = _free_port()
    uri = f"http://alice:s3cr3t-pw@127.0.0.1:{port}"      # the server ignores the password; it must never show
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(key, raising=False)
    server = _start_server(tmp_path, port, wait=False)    # it starts while the reference run runs
    cfg = tiny("search.generations=100", "checkpoint.every=1000", "tracking.gain_every=1000")
    try:
        whole = run_evolution(cfg.replace(**{"tracking.experiment": "uninterrupted",              # no server needed
                                             "tracking.tracking_uri": f"sqlite:///{tmp_path}/whole.db"}), out=quiet)
        _wait_for_server(server, port)
    except BaseException:
        _stop_server(server)
        raise
    lines, lost_at = [], []

    def out(line):
        lines.append(line)
        if line.startswith("gen   40/100") and not lost_at:
            _stop_server(server)
            lost_at.append(time.perf_counter())
        elif lost_at and line.startswith("gen "):
            time.sleep(0.1)      # generations after the loss last past the tracker's next write (every ~2 s)

    try:
        with pytest.raises(TrackingUnavailable) as info:
            run_evolution(cfg, out=out)
        seconds = time.perf_counter() - lost_at[0]
        message = str(info.value)
        assert seconds < 30, seconds                      # MLflow's defaults would retry for ~8 minutes
        assert "s3cr3t-pw" not in message + "".join(lines)
        assert "when the store answers again, continue with `python scripts/evolve.py --resume " in message
        path = message.split("--resume ")[1].rstrip("`")
        saved = load_checkpoint(path)
        stopped = saved["trainer"]["generation"]
        assert 40 <= stopped < 100 and saved["pending_metrics"]       # unwritten metrics kept for the resume
        assert "s3cr3t-pw" not in open(path, "rb").read().decode("latin-1")
        run_id = saved["mlflow_run_id"]
        server = _start_server(tmp_path, port)            # the server is back, on the same store
        # the resume as the user runs it: scripts/evolve.py's main, in this process (its result kept)
        results, real = [], run_module.run_evolution
        monkeypatch.setattr(run_module, "run_evolution", lambda *a, **kw: results.append(real(*a, **kw)) or results[-1])
        capsys.readouterr()
        assert scripts.run("evolve", ["--resume", path]) == 0
        printed = capsys.readouterr().out
        (resumed,) = results
        assert resumed.run_id == run_id and resumed.status == "FINISHED"
        assert torch.equal(resumed.center, whole.center)  # the same as never interrupted
        assert f"open http://127.0.0.1:{port}/#/experiments/" in printed and "s3cr3t-pw" not in printed
        assert not (tmp_path / "mlflow.db").exists()      # the server was used, never a default file store
        client = MlflowClient(f"http://127.0.0.1:{port}")
        assert "best_genome.pt" in {a.path for a in client.list_artifacts(run_id)}
        steps = sorted(m.step for m in client.get_metric_history(run_id, "search/best"))
        assert steps == list(range(1, 101))               # every generation once, across the loss
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        assert run.data.params.get("tracking.tracking_uri") in (None, "", f"http://alice:***@127.0.0.1:{port}")
        assert all("s3cr3t-pw" not in v for v in run.data.params.values())
        text = open(client.download_artifacts(run_id, "config.yaml", str(tmp_path)), encoding="utf-8").read()
        assert "s3cr3t-pw" not in text
        print(f"ended {seconds:.1f} s after the server stopped, at generation {stopped}")
    finally:
        _stop_server(server)


# ---------------------------------------------------------------------------------------------------------
# signals outside the generation loop (subprocesses: a real SIGTERM to a real process)


def _popen(args, tmp_path):
    return subprocess.Popen([sys.executable, f"{REPO}/scripts/evolve.py", *args], cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(tmp_path))


def _signal_on(proc, prefix, sig=signal.SIGTERM):
    """Send ``sig`` when a stdout line starts with ``prefix``; ``(returncode, stdout, stderr, seconds after)``."""
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith(prefix):
            proc.send_signal(sig)
            t0 = time.perf_counter()
            break
    else:
        raise AssertionError("".join(lines) + proc.stderr.read())
    out, err = proc.communicate(timeout=120)
    return proc.returncode, "".join(lines) + out, err, time.perf_counter() - t0


@pytest.mark.slow
def test_sigterm_during_set_up_starts_nothing_and_leaves_a_resumed_run_as_it_was(store, tmp_path):
    # a new run: the signal arrives while Ray starts, before any MLflow run exists
    code, out, err, seconds = _signal_on(_popen(TINY + ["ray.num_actors=1", "search.generations=5"], tmp_path),
                                         "evoplast: setting up")
    assert code == 130 and "Traceback" not in err, err[-3000:]
    assert "interrupted by SIGTERM during set-up; no MLflow run was started" in out, out
    assert seconds < 60
    client = MlflowClient(store)
    assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []
    # a resume of a KILLED run stopped during its set-up: the run stays KILLED, its checkpoint unchanged
    part = _killed_run(store)
    before = part.checkpoint.read_bytes()
    code, out, err, seconds = _signal_on(_popen(["--resume", part.run_id, "ray.num_actors=1"], tmp_path),
                                         "evoplast: setting up")
    assert code == 130 and "Traceback" not in err, err[-3000:]
    assert f"interrupted by SIGTERM during set-up; run {part.run_id} is left as it was" in out, out
    assert client.get_run(part.run_id).info.status == "KILLED"
    assert part.checkpoint.read_bytes() == before
    print(f"exit {seconds:.1f} s after SIGTERM")


@pytest.mark.slow
def test_sigterm_during_the_final_report_keeps_every_generation_and_resumes(tmp_path, monkeypatch):
    args = TINY + ["search.generations=30", "evaluation.heldout_episodes=256", "checkpoint.every=1000",
                   "tracking.gain_every=1000", "--print-every", "1"]
    code, out, err, seconds = _signal_on(_popen(args, tmp_path), "gen   30/30")
    assert code == 130 and "Traceback" not in err, err[-3000:]
    run_id = out.split("evoplast: run ")[1].split()[0]
    assert f"stopped at generation 30 (SIGTERM); checkpoint checkpoints/{run_id}/latest.pt; " \
           f"continue with --resume {run_id}" in out, out
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    assert client.get_run(run_id).info.status == "KILLED"
    assert load_checkpoint(tmp_path / "checkpoints" / run_id / "latest.pt")["trainer"]["generation"] == 30
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    checkpoint, _ = resolve_resume(run_id)
    resumed = run_evolution(resume_config(checkpoint, []), resume=checkpoint, out=quiet)
    assert resumed.status == "FINISHED" and resumed.generations == 30 and "loss" in resumed.report
    assert sorted(m.step for m in client.get_metric_history(run_id, "search/best")) == list(range(1, 31))
    assert "best_genome.pt" in {a.path for a in client.list_artifacts(run_id)}
    print(f"exit {seconds:.1f} s after SIGTERM")


# ---------------------------------------------------------------------------------------------------------
# runs started at the same moment on a fresh sqlite store

RACE = """
import os, sys, time
from evoplast.runs.tracking import Tracker
print("ready", flush=True)
while not os.path.exists(sys.argv[2]):               # every process reaches the store at the same moment
    time.sleep(0.005)
t = Tracker(sys.argv[1])
print(t.start_run("race"))
t.end("FINISHED")
"""


@pytest.mark.slow
def test_runs_started_at_once_on_a_fresh_store_all_start(tmp_path):
    uri = f"sqlite:///{tmp_path}/fresh.db"
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen([sys.executable, "-c", RACE, uri, str(go)], cwd=tmp_path, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(4)]
    for p in procs:                                       # wait until every process has imported MLflow
        assert p.stdout.readline().strip() == "ready", p.stderr.read()[-1500:] if p.poll() is not None else ""
    go.touch()
    results = [p.communicate(timeout=180) + (p.returncode,) for p in procs]
    assert all(code == 0 for _, _, code in results), [err[-1500:] for _, err, _ in results]
    runs = MlflowClient(uri).search_runs([MlflowClient(uri).get_experiment_by_name("race").experiment_id])
    assert sorted(r.info.run_id for r in runs) == sorted(out.strip() for out, _, _ in results)
    assert all(r.info.status == "FINISHED" for r in runs)
