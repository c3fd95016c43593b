"""What a researcher sees: run names, tags, descriptions, grouped metrics, system metrics, plots, progress."""

import io
import re

import pytest
import torch
from mlflow.tracking import MlflowClient

from evoplast.config import flatten, load_config
from evoplast.describe import CENTER, applicable_params, learner_curves, rule_equations, run_name
from evoplast.network import ModelSpec
from evoplast.plots import fitness_curve, mse_vs_tasks_seen
from evoplast.progress import Progress, format_seconds
from evoplast.tracking import Tracker

from . import scripts

TINY = ["task.num_tasks=3", "task.batches_per_task=4", "task.batch_size=4", "task.query_size=8",
        "network.hidden=[8,8]", "evaluation.episodes=2", "evaluation.heldout_episodes=4", "search.popsize=8",
        "search.generations=6", "tracking.gain_every=3", "checkpoint.every=3", "ray.num_actors=0",
        "finetune.after_evolution_steps=2", "evaluation.sgd_lrs=[0.01,0.1]"]


def test_a_run_describes_itself_in_mlflow(store, capsys, monkeypatch):
    monkeypatch.setattr(Tracker, "system_metrics_seconds", 0.2)
    assert scripts.load("evolve").main(TINY) == 0
    out = capsys.readouterr().out
    run_id = out.split("MLflow run ")[1].split(":")[0]
    client = MlflowClient(store)
    run = client.get_run(run_id)
    # name, tags, MLflow's own source / git / user tags
    assert run.info.run_name == "sinusoid-hebb-pgpe-s0"
    tags = run.data.tags
    assert (tags["task"], tags["rule"], tags["searcher"], tags["outer"]) == ("sinusoid", "hebb", "pgpe", "es")
    assert tags["mlflow.source.name"] == "scripts/evolve.py" and tags["mlflow.source.type"] == "LOCAL"
    assert re.fullmatch(r"[0-9a-f]{40}", tags["mlflow.source.git.commit"]) and tags["mlflow.user"]
    child = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'")
    assert [c.info.run_name for c in child] == ["sinusoid-hebb-pgpe-s0-finetune"]
    assert child[0].data.tags["outer"] == "es+bptt" and "ΔW3 = " in child[0].data.tags["mlflow.note.content"]
    # the description: the rule with its numbers (from the saved genome), the table, the next commands
    note = tags["mlflow.note.content"]
    saved = torch.load(client.download_artifacts(run_id, "best_genome.pt"), weights_only=True)
    eta = float(saved["segments"]["layer3.eta"].reshape(-1)[0])
    assert f"ΔW3 = {eta:.3g} · mean over rows[p3 h2ᵀ]" in note
    assert f"| {CENTER} | {run.data.metrics['heldout/loss']:.3f} |" in note
    assert f"python scripts/export.py --run-id {run_id} --which " in note
    assert f"python scripts/evaluate.py --run-id {run_id} --which " in note
    # metrics grouped by prefix, no one-dot final.* charts, system metrics recorded
    metrics = set(run.data.metrics)
    assert all("/" in k for k in metrics), sorted(k for k in metrics if "/" not in k)
    assert {"fitness/best", "fitness/best_so_far", "fitness/median", "heldout/loss", "speed/evals_per_s",
            "baseline/sgd_plastic_weights", "search/stepsize"} <= metrics
    assert any(k.startswith("system/") for k in metrics)
    so_far = [m.value for m in sorted(client.get_metric_history(run_id, "fitness/best_so_far"), key=lambda m: m.step)]
    assert len(so_far) == 6 and so_far == sorted(so_far)
    assert [m.step for m in client.get_metric_history(run_id, "baseline/sgd_plastic_weights")] in ([0, 6], [6, 0])
    # params: only those that apply; tuned learning rates as params
    params = run.data.params
    assert "task.glyph_classes" not in params and "network.conv_channels" not in params
    assert "task.image_size" not in params and "task.amplitude" in params
    assert float(params["tuned_lr.sgd_plastic_weights"]) > 0
    names = {a.path for a in client.list_artifacts(run_id)}
    assert {"heldout_summary.json", "report.json", "fitness_curve.png", "mse_vs_tasks_seen.png"} <= names
    # the terminal: a Next: block with this run's commands
    tail = out.split("Next:\n", 1)[1]
    assert f"python scripts/export.py --run-id {run_id}" in tail and f"scripts/evaluate.py --run-id {run_id}" in tail
    # a registered version carries a description (the rule) and tags
    assert scripts.load("export").main(["--run-id", run_id, "--out", "rule.pt2"]) == 0
    version = client.get_model_version("evoplast-rule", "1")
    assert f"ΔW3 = {eta:.3g}" in version.description and run_id in version.description
    assert version.tags["task"] == "sinusoid" and version.tags["source_run"] == run_id
    assert float(version.tags["heldout_loss"]) == pytest.approx(saved["heldout_loss"], abs=1e-4)


def test_params_apply_to_the_task_and_model():
    sin = applicable_params(flatten(load_config(None, ["search.algorithm=cmaes"])))
    assert "task.glyph_classes" not in sin and "search.center_learning_rate" not in sin and "search.separable" in sin
    glyphs = flatten(load_config(None, ["task.name=glyphs", "task.num_tasks=5", "network.features=conv"]))
    kept = applicable_params(glyphs)
    assert kept["task.glyph_classes"] == glyphs["task.glyph_classes"] and "network.conv_channels" in kept
    assert "task.amplitude" not in kept and "task.data_dir" not in kept
    assert run_name(glyphs, "finetune") == f"glyphs-{glyphs['rule.name']}-{glyphs['search.algorithm']}-s0-finetune"


def test_rule_equation_writes_the_numbers():
    model = ModelSpec(sizes=(2, 3, 1), plastic_layers=(1, 2), rule="oja", terms=(), teaching_signal="error",
                      feedback_activation="relu", kind="regression", features="none", image_size=0,
                      conv_channels=(), batch_reduction="sum")
    seg = {"layer2.eta": torch.tensor([[[0.0045]]]), "layer2.beta": torch.tensor([[[0.939]]]),
           "layer2.feedback": torch.tensor([[[1.454]]]), "layer2.feedback_bias": torch.tensor([[0.139]]),
           "layer1.eta": torch.tensor([[[0.5]]]), "layer1.beta": torch.tensor([[[0.25]]]),
           "layer1.feedback": torch.tensor([[[1.0], [2.0], [3.0]]]), "layer1.feedback_bias": torch.zeros(1, 3)}
    lines = rule_equations(model, seg)
    assert lines[:4] == ["p1 = 0.25·relu(B1·(y − ŷ) + c1) + 0.75·h1",
                         "ΔW1 = 0.5 · sum over rows[p1 xᵀ − diag(p1²) W1]",
                         "p2 = 0.939·(1.45·(y − ŷ) + 0.139) + 0.061·ŷ",
                         "ΔW2 = 0.0045 · sum over rows[p2 h1ᵀ − diag(p2²) W2]"]
    assert lines[4].startswith("  B1 (3, 1): mean 2 (range 1..3, 3 values)")


def test_plots_show_every_learner_and_a_readable_range():
    keys = ("loss", "loss_plasticity_off", "sgd_plastic_weights", "sgd_same_init", "fa_same_init", "sgd_seed_init",
            "sgd_iid_same_init")
    report = {"curves_per_episode": {k: [[1.0 + i, 2.0], [1.5 + i, 2.5], [1.2, 2.2]] for i, k in enumerate(keys)}}
    fig = mse_vs_tasks_seen(learner_curves(report))
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert len(labels) == 7 and labels[0] == CENTER and "feedback alignment, same initial weights" in labels
    assert len(ax.collections) == 7                       # one 95% band per learner
    history = [{"generation": g, "best": -3 + g / 100, "mean": -5 + g / 100, "median": -4.0,
                "worst": -100.0 if g == 50 else -8.0} for g in range(100)]
    fig = fitness_curve(history, [{"generation": 100, "loss": 2.5}], baselines={"online SGD": 2.0})
    ax = fig.axes[0]
    lo, hi = ax.get_ylim()
    assert -7 < lo < -4.5 and -2.1 < hi < -1.5            # a capped genome at -100 does not stretch it
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "best so far (training episodes)" in labels and "online SGD, held-out (−loss)" in labels
    assert any(label.startswith("search center, held-out") for label in labels)


class _Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_in_a_terminal_and_in_a_log():
    clock = _Clock()
    tty = _Tty()
    bar = Progress(10, "gen", stream=tty, clock=clock)
    for g in range(1, 11):
        clock.t = 2.0 * g
        bar.update(g, {"best so far": "-1.5"})
        if g == 5:
            bar.note("held-out 1.23")
    text = tty.getvalue()
    assert text.count("\r") >= 10 and "held-out 1.23\n" in text and text.endswith("\n")
    assert "gen    4/10 | best so far -1.5 | elapsed 0:08 | ETA 0:12" in text and "█" in text
    plain = io.StringIO()
    clock.t = 0.0
    log = Progress(100, "gen", stream=plain, every=25, clock=clock)
    for g in range(1, 101):
        clock.t = float(g)
        log.update(g, {"best so far": "-1.0"})
    lines = plain.getvalue().splitlines()
    assert lines == [f"gen {g:4d}/100 | best so far -1.0 | elapsed {format_seconds(g)} | ETA {format_seconds(100 - g)}"
                     for g in (25, 50, 75, 100)]
    assert "\r" not in plain.getvalue() and format_seconds(3725) == "1:02:05"
