"""scripts/evolve.py as a user runs it: subprocesses, signals, an MLflow server, unreachable services."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from mlflow.tracking import MlflowClient

from .conftest import REPO
from .test_evolution import TINY


def _env(tmp_path, **extra):
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db", "PYTHONUNBUFFERED": "1"}
    env.update(extra)
    return env


def _evolve(args, tmp_path, timeout=300, **env):
    return subprocess.run([sys.executable, f"{REPO}/scripts/evolve.py", *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=timeout, env=_env(tmp_path, **env))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_evolve_script_end_to_end_prints_progress_and_summary(tmp_path):
    proc = _evolve(TINY + ["search.generations=40", "--print-every", "10"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert out.count("evals/s") == 4 and "gen   40/40 | best" in out
    for line in ("evolved rule (search center)", "same genome, plasticity off",
                 "online SGD on the plastic weights only, same initial weights",
                 "online SGD on every weight and bias, same initial weights", "best input-only predictor",
                 "transfer, 4x longer stream: evolved rule", "transfer, 4x larger batches: SGD on the plastic weights",
                 "online SGD, seed's initial weights", "episode-specific gain", "mlflow ui --backend-store-uri"):
        assert line in out, line
    run_id = out.split("MLflow run ")[1].split(":")[0]
    run = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(run_id)
    assert run.info.status == "FINISHED"


def test_sigint_checkpoints_and_resume_finishes_the_same_run(tmp_path):
    args = TINY + ["search.generations=400", "checkpoint.every=1000", "tracking.gain_every=1000", "--print-every", "1"]
    proc = subprocess.Popen([sys.executable, f"{REPO}/scripts/evolve.py", *args], cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(tmp_path))
    lines = []
    for line in proc.stdout:                      # wait until it is evolving, then Ctrl-C
        lines.append(line)
        if line.startswith("gen   20/400"):
            proc.send_signal(signal.SIGINT)
            break
    out, err = proc.communicate(timeout=120)
    out = "".join(lines) + out
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    run_id = out.split("evoplast: run ")[1].split()[0]
    assert f"continue with --resume {run_id}" in out
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    assert client.get_run(run_id).info.status == "KILLED"
    stopped_at = int(out.split("stopped at generation ")[1].split()[0])
    assert 20 <= stopped_at < 400
    resumed = _evolve(["--resume", run_id], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed at generation {stopped_at}" in resumed.stdout
    assert client.get_run(run_id).info.status == "FINISHED"
    steps = sorted(m.step for m in client.get_metric_history(run_id, "fitness/best"))
    assert steps == list(range(1, 401))             # every generation once, across the interruption


def test_against_an_mlflow_server_on_localhost(tmp_path):
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path}/server.db", "--default-artifact-root", str(tmp_path / "art"),
         "--workers", "1"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2):
                    break
            except OSError:
                assert time.time() < deadline and server.poll() is None, "MLflow server did not start"
                time.sleep(0.5)
        proc = _evolve(TINY + ["search.generations=6", "tracking.experiment=server-test"], tmp_path,
                       MLFLOW_TRACKING_URI=uri)
        assert proc.returncode == 0, proc.stderr[-2000:]
        run_id = proc.stdout.split("MLflow run ")[1].split(":")[0]
        client = MlflowClient(uri)
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        assert len(client.get_metric_history(run_id, "fitness/best")) == 6
        assert "best_genome.pt" in {a.path for a in client.list_artifacts(run_id)}
        assert f"open {uri}/#/experiments/" in proc.stdout
        assert not (tmp_path / "mlflow.db").exists()  # the server was used, not the default file
    finally:
        os.killpg(server.pid, signal.SIGTERM)        # the server and its workers, by process group id
        server.wait(timeout=30)


@pytest.mark.parametrize("args, env, fragment", [
    ([], {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}, "cannot reach the MLflow tracking server at http://127.0.0.1:9"),
    (["ray.num_actors=1", "ray.address=127.0.0.1:9"], {}, "cannot reach the Ray cluster at ray.address='127.0.0.1:9'"),
    (["--resume", "0123456789abcdef"], {}, "no MLflow run with id '0123456789abcdef'"),
    (["--resume", "missing/latest.pt"], {}, "checkpoint 'missing/latest.pt' does not exist"),
])
def test_unreachable_services_and_bad_resume_are_one_line_before_any_compute(tmp_path, args, env, fragment):
    t0 = time.time()
    proc = _evolve(TINY + args if not args or not args[0].startswith("--") else args, tmp_path, timeout=120, **env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.startswith("evoplast:")]
    assert len(lines) == 1 and fragment in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "gen " not in proc.stdout
    assert time.time() - t0 < 60
    if (tmp_path / "mlflow.db").exists():           # no run was left behind
        assert not MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").search_runs(["0", "1"])


def test_truncated_checkpoint_is_one_line(tmp_path):
    bad = tmp_path / "latest.pt"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    proc = _evolve(["--resume", str(bad)], tmp_path)
    assert proc.returncode == 1 and "is corrupt or truncated" in proc.stderr and "Traceback" not in proc.stderr


def test_evolve_benchmark_prints_the_ray_targets_with_a_verdict(tmp_path):
    """scripts/benchmark.py evolve, one generation per setting: every row and both targets with pass/short."""
    proc = subprocess.run([sys.executable, f"{REPO}/scripts/benchmark.py", "evolve", "--generations", "1",
                           "--no-auth", "--threads", "1"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, env=_env(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith(("light:", "heavy:"))]
    assert [(r.split(":")[0], int(r[34:41])) for r in rows] == [(c, a) for c in ("light", "heavy") for a in (0, 1, 2)], \
        proc.stdout
    for target in ("2 actors vs 1 actor", "Ray overhead per generation"):
        line = next(line for line in proc.stdout.splitlines() if target in line)
        assert line.endswith(("pass", "short")), line


def test_benchmark_bad_arguments_are_one_line_and_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, f"{REPO}/scripts/benchmark.py", "lifetimes"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("evoplast: error: bad arguments")
