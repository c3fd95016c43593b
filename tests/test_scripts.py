"""scripts/evolve.py as a user runs it: end to end in a real process, Ctrl-C and resume, unreachable services,
bad checkpoints; scripts/benchmark.py's evolve table. (A run against a real MLflow server, which it loses and
resumes on: tests/test_faults.py.)

One true end-to-end run is a subprocess (``slow``); the rest run the script's ``main(argv)`` in this
process (:mod:`tests.scripts`), which is what the script's ``__main__`` does after ~20 s of imports."""

import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from evoplast.runs import evolve as run_module

from . import scripts
from .conftest import REPO, fresh_store
from .test_evolution import TINY


def _env(tmp_path, **extra):
    env = {**os.environ, "MLFLOW_TRACKING_URI": fresh_store(tmp_path), "PYTHONUNBUFFERED": "1"}
    env.update(extra)
    return env


def _evolve(args, tmp_path, timeout=300, **env):
    return subprocess.run([sys.executable, f"{REPO}/scripts/evolve.py", *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=timeout, env=_env(tmp_path, **env))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_evolve_script_end_to_end_prints_progress_and_summary(tmp_path):
    """The one run of scripts/evolve.py as a real process: start-up, progress, summary, exit code 0."""
    proc = _evolve(TINY + ["search.generations=20", "--print-every", "5"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert out.count("evals/s") == 4 and "gen   20/20 | best" in out
    for line in ("evolved rule (search center)", "same genome, plasticity off",
                 "online SGD on the plastic weights only, same initial weights",
                 "online SGD on every weight and bias, same initial weights", "best input-only predictor",
                 "transfer, 4x longer stream: evolved rule", "transfer, 4x larger batches: SGD on the plastic weights",
                 "online SGD, seed's initial weights", "episode-specific gain", "mlflow ui --backend-store-uri"):
        assert line in out, line
    run_id = out.split("MLflow run ")[1].split(":")[0]
    run = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(run_id)
    assert run.info.status == "FINISHED"


def test_sigint_checkpoints_and_resume_finishes_the_same_run(store, monkeypatch, capsys):
    """Ctrl-C (a real SIGINT to this process, sent when generation 20 is printed) lets the generation in
    flight finish, checkpoints, exits 130; ``--resume RUN`` finishes the same run, every generation once."""
    real = run_module.run_evolution

    def interrupted_at_20(cfg, *, out=print, **kw):
        def out_and_interrupt(line):
            out(line)
            if line.startswith("gen   20/60"):
                os.kill(os.getpid(), signal.SIGINT)
        return real(cfg, **kw, out=out_and_interrupt)

    monkeypatch.setattr(run_module, "run_evolution", interrupted_at_20)
    args = TINY + ["search.generations=60", "checkpoint.every=1000", "tracking.gain_every=1000", "ray.num_actors=0",
                   "--print-every", "1"]
    code = scripts.run("evolve", args)
    out, err = capsys.readouterr()
    assert code == 130 and "Traceback" not in err, err[-2000:]
    run_id = out.split("evoplast: run ")[1].split()[0]
    assert f"continue with --resume {run_id}" in out
    client = MlflowClient(store)
    assert client.get_run(run_id).info.status == "KILLED"
    stopped_at = int(out.split("stopped at generation ")[1].split()[0])
    assert 20 <= stopped_at < 60
    monkeypatch.setattr(run_module, "run_evolution", real)
    code = scripts.run("evolve", ["--resume", run_id])
    out, err = capsys.readouterr()
    assert code == 0, err[-2000:]
    assert f"resumed at generation {stopped_at}" in out
    assert client.get_run(run_id).info.status == "FINISHED"
    steps = sorted(m.step for m in client.get_metric_history(run_id, "search/best"))
    assert steps == list(range(1, 61))              # every generation once, across the interruption


@pytest.mark.parametrize("args, env, fragment", [
    ([], {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}, "cannot reach the MLflow tracking server at http://127.0.0.1:9"),
    (["ray.num_actors=1", "ray.address=127.0.0.1:9"], {}, "cannot reach the Ray cluster at ray.address='127.0.0.1:9'"),
    (["--resume", "0123456789abcdef"], {}, "no MLflow run with id '0123456789abcdef'"),
    (["--resume", "missing/latest.pt"], {}, "checkpoint 'missing/latest.pt' does not exist"),
])
def test_unreachable_services_and_bad_resume_are_one_line_before_any_compute(store, monkeypatch, capsys, args, env,
                                                                           fragment):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    t0 = time.time()
    code = scripts.run("evolve", TINY + args if not args or not args[0].startswith("--") else args)
    out, err = capsys.readouterr()
    assert code == 1, out + err
    assert fragment in scripts.error_line(err) and "gen " not in out
    assert time.time() - t0 < 60
    if env.get("MLFLOW_TRACKING_URI", store) == store and os.path.exists("mlflow.db"):   # no run was left behind
        assert not MlflowClient(store).search_runs(["0", "1"])


def test_truncated_checkpoint_is_one_line(store, tmp_path, capsys):
    bad = tmp_path / "latest.pt"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    code = scripts.run("evolve", ["--resume", str(bad)])
    assert code == 1 and "is corrupt or truncated" in scripts.error_line(capsys.readouterr().err)


ROW = re.compile(r"^(light|heavy): .+?\s+(\d)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)x")
TARGET = re.compile(r"^  (2 actors vs 1 actor|Ray overhead per generation)[^\d-]+(-?[\d.]+)(x|%) \(target (>=|<) ([\d.]+)%?\): "
                    r"(pass|short)$")


@pytest.mark.slow
def test_evolve_benchmark_prints_every_row_and_verdicts_that_follow_the_numbers(tmp_path, monkeypatch, capsys):
    """scripts/bench_evolve.py (benchmark.py evolve), one generation per setting, in this process (a throwaway local Ray,
    shut down by the script): a row per actor count whose numbers agree with each other, and each target's
    verdict is what its number says. Only the heavy configuration (the one the targets read), shrunk: the
    table's logic is under test, not the machine, and the light rows come from the same code."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(scripts.load("bench_evolve"), "PAPER_WIDTH",
                        ["network.hidden=[32,32]", "task.batches_per_task=10", "task.batch_size=8"])
    assert scripts.run("bench_evolve", ["--generations", "1", "--threads", "1", "--only", "heavy"]) == 0
    out = capsys.readouterr().out
    rows = [ROW.match(line).groups() for line in out.splitlines() if line.startswith(("light:", "heavy:"))]
    assert [(c, int(a)) for c, a, *_ in rows] == [("heavy", a) for a in (0, 1, 2)], out
    popsize = {"heavy": 8}
    for config, actors, gen_per_s, evals_per_s, vs_0 in rows:
        assert float(evals_per_s) == pytest.approx(popsize[config] * float(gen_per_s), rel=0.02, abs=0.1), out
        if actors == "0":
            assert vs_0 == "1.00", out
    targets = {m.group(1): m.groups() for m in map(TARGET.match, out.splitlines()) if m}
    assert set(targets) == {"2 actors vs 1 actor", "Ray overhead per generation"}, out
    for _, value, _, op, threshold, verdict in targets.values():
        met = float(value) >= float(threshold) if op == ">=" else float(value) < float(threshold)
        assert verdict == ("pass" if met else "short"), out


def test_benchmark_bad_arguments_are_one_line_and_exit_2(capsys):
    assert scripts.run("benchmark", ["lifetimes"]) == 2
    assert scripts.error_line(capsys.readouterr().err) == (
        "evoplast: error: argument which: invalid choice: 'lifetimes' (choose from 'lifetime', 'evolve', 'memory', "
        "'allocator', 'outer') (see benchmark.py --help)")
