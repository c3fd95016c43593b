"""One run session for every command (evoplast/runs/session.py): the same preflight, the same checkpoint
format, resumes that say which command continues a file."""

import pytest

from evoplast.runs.session import RESUMABLE, SCRIPTS, command_of, resume_config

from . import scripts
from .scripts import error_line

TINY = ["task.num_tasks=2", "task.batches_per_task=2", "task.batch_size=4", "task.query_size=4",
        "network.hidden=[4,4]", "evaluation.episodes=2", "evaluation.heldout_episodes=2", "search.popsize=4",
        "search.generations=2", "finetune.steps=2", "finetune.episodes=2"]


@pytest.mark.parametrize("command, argv", [
    ("evolve", []),
    ("train", ["--outer", "bptt"]),
    ("train", ["--outer", "es"]),
    ("finetune", []),
    ("evaluate", ["--oml-budget", "0"]),
    ("seeds", ["--seeds", "0", "1"]),
])
def test_preflight_runs_for_every_command_before_anything_is_created(command, argv, tmp_path, monkeypatch, capsys):
    """A checkpoint folder that cannot be created is refused by every command in one line, before a store, a
    run or an output folder exists (the same preflight, through the run session)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    (tmp_path / "blocker").write_text("a file where a folder should be")
    code = scripts.run(command, [*argv, *TINY, "checkpoint.dir=blocker/checkpoints"])
    line = error_line(capsys.readouterr().err)
    assert code == 1 and "blocker/checkpoints' cannot be created" in line, (code, line)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker"]


def test_every_checkpoint_names_the_command_that_resumes_it():
    assert command_of({"kind": "evoplast.run", "command": "finetune"}) == "finetune"
    assert command_of({"kind": "evoplast.outer_run", "outer": "pes"}) == "train"      # a file of the last version
    assert command_of({"trainer": {"generation": 3}}) == "evolve"                  # an evolution's, older still
    assert set(SCRIPTS) == set(RESUMABLE) == {"evolve", "train", "finetune"}


def test_a_resume_may_change_only_what_its_command_allows():
    from evoplast.config import ConfigError, load_config, to_yaml

    checkpoint = {"kind": "evoplast.run", "command": "finetune", "config_yaml": to_yaml(load_config(None, TINY)),
                  "mlflow_run_id": "0" * 32, "trainer": {}}
    assert resume_config(checkpoint, ["finetune.eval_every=5"]).finetune.eval_every == 5
    with pytest.raises(ConfigError, match="finetune.lr cannot change when resuming"):
        resume_config(checkpoint, ["finetune.lr=0.5"])
    with pytest.raises(ConfigError, match="search.generations cannot change"):
        resume_config(checkpoint, ["search.generations=9"])
    assert resume_config({**checkpoint, "command": "evolve"}, ["search.generations=9"]).search.generations == 9


def test_the_train_script_checks_what_any_resume_may_change():
    """scripts/train.py refuses an override before reading the checkpoint; what it lets through is what an
    evolution's or a training run's resume allows."""
    assert set(scripts.load("train").RESUMABLE_ANY) <= set(RESUMABLE["train"]) | set(RESUMABLE["evolve"])


def test_the_default_pipeline_is_one_library_call(tmp_path, monkeypatch):
    """``evoplast.evolve(cfg)``: ES, its summary, then BPTT from the search center nested under the run."""
    from mlflow.tracking import MlflowClient

    import evoplast
    from evoplast.config import load_config

    monkeypatch.chdir(tmp_path)
    store = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = load_config(None, [*TINY, "ray.num_actors=0", f"tracking.tracking_uri={store}",
                             "finetune.after_evolution_steps=3"])
    lines = []
    result = evoplast.evolve(cfg, out=lines.append)
    assert result.status == "FINISHED" and result.finetune is not None
    assert result.finetune.parent_run_id == result.run_id
    assert any(line.startswith("Fine-tuned by BPTT (3 meta-steps") for line in lines), lines
    assert result.finetuned_better == (result.finetune.after[0]["loss"] <= result.finetune.before[0]["loss"])
    client = MlflowClient(store)
    assert {client.get_run(r).info.status for r in (result.run_id, result.finetune.run_id)} == {"FINISHED"}
