"""Bad command lines of scripts/export.py and scripts/evaluate.py: one line, the right exit code, no work.

The scripts run in-process through ``main(argv)`` under :func:`evoplast.cli.run_main` (which turns known
errors into one line on stderr and an exit code), in a private MLflow store: a check that happens
"before any work" must leave no ``mlflow.db`` behind.
"""

import pytest

from . import scripts


def _run(capsys, name, argv):
    code = scripts.run(name, argv)
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.fixture
def afile(tmp_path):
    path = tmp_path / "afile"
    path.write_text("not a folder")
    return path


def _cases(tmp, afile):
    (tmp / "adir.pt2").mkdir()
    return [
        ("export", ["--out", "r.pt2"], 2, "--run-id RUN is required"),
        ("export", ["--run-id", "x", "--out", "r.pt2", "--config", "c.yaml"], 2, "export.py takes the config from the run"),
        ("export", ["--run-id", "x", "--out", "r.pt2", "rule.name=oja"], 2, "key=value overrides do not apply"),
        ("evolve", ["--run-id", "a", "--resume", "b"], 2, "--run-id and --resume name two runs"),
        ("evolve", ["--run-id", "a", "--config", "c.yaml"], 2, "drop --config"),
        ("evolve", ["evaluation.chunk_size=0"], 2, "evaluation.chunk_size=0 is invalid: 0 no longer means"),
        ("benchmark", ["lifetime", "rule.name=oja"], 2, "config overrides apply only to the outer benchmark"),
        ("export", ["--run-id", "x", "--out", "r.txt"], 2, "should end in .pt2"),
        ("export", ["--run-id", "x", "--out", str(tmp / "adir.pt2")], 2, "is a directory"),
        ("export", ["--run-id", "x", "--out", "r.pt2", "--name", " "], 2, "--name is empty"),
        ("export", ["--run-id", "x", "--out", f"{afile}/r.pt2"], 1, "is not a directory"),
        ("export", ["--run-id", "x", "--out", "/sys/evoplast-rule.pt2"], 1, "cannot write '/sys/evoplast-rule.pt2'"),
        ("evaluate", ["--oml-steps", "-1"], 2, "--oml-steps -1: give a number of meta-steps >= 0"),
        ("evaluate", ["--oml-steps", "x"], 2, "invalid int value"),
        ("evaluate", ["--run-id", "", "--oml-steps", "0"], 2, "--run-id is empty"),
        ("evaluate", ["--out", str(afile)], 2, "is a file; give a directory"),
        ("evaluate", ["--out", f"{afile}/plots"], 1, "is not a directory"),
        ("evaluate", ["--run-id", "x", "--config", "c.yaml"], 2, "--config goes without --run-id"),
        ("evaluate", ["--which", "finetuned"], 2, "--which finetuned needs --run-id"),
        ("export", ["--run-id", "x", "--out", "r.pt2", "--which", "nope"], 2, "invalid choice: 'nope'"),
        ("evaluate", ["--config", "missing.yaml", "--oml-steps", "0"], 2, "config file 'missing.yaml' does not exist"),
        ("evaluate", ["bad.key=1", "--oml-steps", "0"], 2, "unknown key 'bad'"),
        ("evaluate", ["--oml-steps", "0", "evaluation.heldout_episodes=0"], 2, "must be >= 2"),
        ("evaluate", ["--run-id", "x", "network.hidden=[3]"], 2, "network.hidden cannot change"),
    ]


@pytest.fixture
def no_store(tmp_path, monkeypatch):
    """A working directory whose MLflow store does not exist yet (a check before any work leaves none)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")


def test_bad_input_is_one_line_before_any_work(tmp_path, no_store, capsys, afile):
    for name, argv, code, fragment in _cases(tmp_path, afile):
        got, err = _run(capsys, name, argv)
        assert (got, "\n" in err) == (code, False) and fragment in err and err.startswith("evoplast: error:"), \
            (name, argv, got, err)
        assert not (tmp_path / "mlflow.db").exists(), (name, argv, "touched the MLflow store")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["adir.pt2", "afile"], (name, argv)


def test_unknown_run_is_one_line(tmp_path, store, capsys):
    from mlflow import MlflowClient

    MlflowClient(store).search_experiments()          # the store exists, without that run
    for name, argv in (("export", ["--run-id", "feedbeef", "--out", "r.pt2"]),
                       ("evaluate", ["--run-id", "feedbeef", "--oml-steps", "0"])):
        code, err = _run(capsys, name, argv)   # (MLflow's own INFO lines about creating its tables come first)
        last = err.splitlines()[-1]
        assert code == 1 and last.startswith(f"evoplast: error: no MLflow run with id 'feedbeef' in {store}; point at "
                                             f"the store that holds it with --tracking-uri URI or MLFLOW_TRACKING_URI"), err
        assert "Traceback" not in err
    assert not (tmp_path / "r.pt2").exists() and not (tmp_path / "evaluation").exists()


SCRIPTS = ["evolve", "train", "finetune", "export", "evaluate", "seeds", "benchmark", "bench_lifetime", "bench_evolve",
           "bench_outer", "bench_memory", "bench_allocator", "gpu_check"]


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_script_prints_the_config_reference(name, capsys):
    from evoplast.config import help_text, reference

    assert scripts.run(name, ["--help-config"]) == 0
    out = capsys.readouterr().out
    assert out == help_text() and len(out.splitlines()) == len(reference())
    assert "search.popsize = 32  (an integer >= 2 and <= 1,000,000)  population size" in out.splitlines()


@pytest.mark.parametrize("name, argv", [
    ("export", ["--run-id", "abc123", "--out", "r.pt2"]),
    ("finetune", ["--run-id", "abc123"]),
    ("evaluate", ["--run-id", "abc123", "--oml-steps", "0"]),
    ("evolve", ["--run-id", "abc123"]),
])
def test_a_run_id_without_its_store_is_one_line_and_creates_no_store(name, argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    code, err = _run(capsys, name, argv)
    assert code == 1 and "\n" not in err, err
    assert err == (f"evoplast: error: run 'abc123': no MLflow store at sqlite:///{tmp_path}/mlflow.db (the file does "
                   f"not exist); point at the store that holds the run with --tracking-uri URI or MLFLOW_TRACKING_URI")
    other = tmp_path / "elsewhere.db"
    code, err = _run(capsys, name, [*argv, "--tracking-uri", f"sqlite:///{other}"])
    assert code == 1 and f"no MLflow store at sqlite:///{other} " in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == []          # no mlflow.db, no elsewhere.db, nothing
