"""What a researcher sees: run names, tags, descriptions, grouped metrics, system metrics, plots, progress."""

import io
from pathlib import Path
import json
import re

import pytest
import torch
from mlflow.tracking import MlflowClient

from evoplast.config import flatten, load_config
from evoplast.runs.run_page import CENTER, FINETUNED, applicable_params, learner_curves, rule_equations, run_name
from evoplast.network import ModelSpec
from evoplast.runs.plots import fitness_curve, mse_vs_tasks_seen
from evoplast.runs.progress import Progress, format_seconds
from evoplast.runs.tracking import Tracker

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
    assert [c.info.run_name for c in child] == ["finetune · sinusoid-hebb-pgpe-s0"]    # role first
    ft = child[0]
    assert ft.data.tags["outer"] == "es+bptt" and "ΔW3 = " in ft.data.tags["mlflow.note.content"]
    # headline metrics with stable names: the recommended rule, the evolved rule, the best baseline
    report = json.loads(open(client.download_artifacts(run_id, "report.json")).read())
    m = run.data.metrics
    after = ft.data.metrics["heldout/loss"]
    use_ft = after <= report["loss"]
    assert m["summary/evolved_loss"] == pytest.approx(report["loss"], abs=1e-6)
    assert m["summary/finetuned_loss"] == pytest.approx(after, abs=1e-6)
    assert m["summary/recommended_loss"] == pytest.approx(min(after, report["loss"]), abs=1e-6)
    baselines = {k: report[k] for k in ("sgd_plastic_weights", "sgd_same_init", "fa_same_init", "sgd_seed_init",
                                        "sgd_iid_same_init", "input_only")}
    assert m["summary/best_baseline_loss"] == pytest.approx(min(baselines.values()), abs=1e-6)
    assert tags["summary.recommended"] == ("finetuned" if use_ft else "best")
    assert m["summary/recommended_minus_best_baseline"] == pytest.approx(
        m["summary/recommended_loss"] - m["summary/best_baseline_loss"], abs=1e-6)
    # the description: first line the rule to use and its number, its equations, the table with the best
    # learner marked and the baselines that beat the rule, units, links, the next commands
    note = tags["mlflow.note.content"]
    first = note.splitlines()[0]
    rule = FINETUNED if use_ft else CENTER
    assert first.startswith(f"**Use: the {rule}**, held-out query MSE **{min(after, report['loss']):.3f}**"), first
    tuned = torch.load(client.download_artifacts(ft.info.run_id, "finetuned_genome.pt"), weights_only=True)
    saved = torch.load(client.download_artifacts(run_id, "best_genome.pt"), weights_only=True)
    shown = tuned if use_ft else saved
    eta = float(shown["segments"]["layer3.eta"].reshape(-1)[0])
    assert note.splitlines()[4] == f"ΔW3 = {eta:.3g} · mean over rows[p3 h2ᵀ]"     # the rule to use, first
    assert f"| {CENTER} | {run.data.metrics['heldout/loss']:.3f} |" in note
    beat = [k for k, v in baselines.items() if v < min(after, report["loss"])]
    assert (f"Baselines that beat the {rule}: " in note) == bool(beat)
    assert note.count("← best") == 1 and "Units: query MSE: the mean squared error" in note
    assert f"(#/experiments/{run.info.experiment_id}/runs/{ft.info.run_id})" in note
    assert f"python scripts/export.py --run-id {run_id} --which " in note
    assert f"python scripts/evaluate.py --run-id {run_id} --which " in note
    # one chart per quantity; sections (MLflow orders them by name) by importance: heldout/ (the loss first,
    # the baselines beside it), learning/, search/, speed/, the one-number summary/ last
    metrics = set(run.data.metrics)
    assert all("/" in k for k in metrics), sorted(k for k in metrics if "/" not in k)
    assert {"search/best", "search/best_so_far", "search/median", "heldout/loss", "speed/evals_per_s",
            "heldout/loss_baseline_sgd_plastic_weights", "search/stepsize", "learning/gain"} <= metrics
    assert not {"speed/lifetimes_per_s", "baseline/sgd_plastic_weights", "fitness/best",
                "heldout/loss_baseline_loss_plasticity_off"} & metrics
    sections = sorted({k.split("/")[0] for k in metrics if not k.startswith("system/")})
    assert sections == ["heldout", "learning", "search", "speed", "summary"]
    assert sorted(k for k in metrics if k.startswith("heldout/"))[0] == "heldout/loss"
    assert any(k.startswith("system/") for k in metrics)
    so_far = [m.value for m in sorted(client.get_metric_history(run_id, "search/best_so_far"), key=lambda m: m.step)]
    assert len(so_far) == 6 and so_far == sorted(so_far)
    assert sorted(m.step for m in client.get_metric_history(run_id, "heldout/loss_baseline_sgd_plastic_weights")) == [0, 6]
    assert sorted(m.step for m in client.get_metric_history(run_id, "heldout/loss")) == list(range(7))  # 0: before
    assert sorted(m.step for m in client.get_metric_history(run_id, "learning/gain")) == [0, 3, 6]
    # the fine-tune: no chart twice, none constant; its held-out curve starts at step 0 (before)
    ft_metrics = {k for k in ft.data.metrics if not k.startswith("system/")}
    assert ft_metrics == {"heldout/loss", "meta/loss", "meta/grad_norm", "speed/step_seconds"}, ft_metrics
    assert sorted(m.step for m in client.get_metric_history(ft.info.run_id, "heldout/loss")) == [0, 2]
    # params: only those that apply (no Ray keys on an in-process run, the fine-tune's real step count)
    params = run.data.params
    assert "task.glyph_classes" not in params and "network.conv_channels" not in params
    assert "task.image_size" not in params and "task.amplitude" in params
    assert float(params["tuned_lr.sgd_plastic_weights"]) > 0
    assert not [k for k in params if k.startswith("ray.") or "gpu" in k], params      # ray.num_actors=0 here
    assert params["finetune.after_evolution_steps"] == "2" and "finetune.steps" not in params
    assert ft.data.params["finetune.steps"] == "2" and not [k for k in ft.data.params if k.startswith("ray.")]
    names = {a.path for a in client.list_artifacts(run_id)}
    assert {"heldout_summary.json", "report.json", "fitness_curve.png", "mse_vs_tasks_seen.png"} <= names
    # the terminal: a Next: block with this run's commands
    tail = out.split("Next:\n", 1)[1]
    assert f"python scripts/export.py --run-id {run_id}" in tail and f"scripts/evaluate.py --run-id {run_id}" in tail
    # a registered version carries a description (the rule) and tags; its source run is the producing run
    assert scripts.load("export").main(["--run-id", run_id, "--out", "rule.pt2"]) == 0
    version = client.get_model_version("evoplast-rule", "1")
    eta = float(saved["segments"]["layer3.eta"].reshape(-1)[0])
    assert f"ΔW3 = {eta:.3g}" in version.description and run_id in version.description
    assert version.tags["task"] == "sinusoid" and version.tags["source_run"] == run_id
    assert float(version.tags["heldout_loss"]) == pytest.approx(saved["heldout_loss"], abs=1e-4)
    assert version.run_id == run_id
    assert scripts.load("export").main(["--run-id", run_id, "--which", "finetuned", "--out", "tuned.pt2"]) == 0
    tuned_version = client.get_model_version("evoplast-rule", "2")
    assert tuned_version.run_id == ft.info.run_id                     # the fine-tune produced it
    model = client.get_registered_model("evoplast-rule")
    assert "evoplast" in model.description and model.tags["tasks"] == "sinusoid"
    assert model.aliases == {"recommended": 2 if use_ft else 1}
    # the parent lists its versions (tag, links); export runs are named role first, with tags and a description
    parent = client.get_run(run_id).data.tags
    assert parent["registered_versions"] == "evoplast-rule v1 (best), evoplast-rule v2 (finetuned)"
    assert "[evoplast-rule v2](#/models/evoplast-rule/versions/2) (finetuned)" in parent["mlflow.note.content"]
    exports = {c.info.run_name: c for c in client.search_runs([run.info.experiment_id],
                                                              f"tags.mlflow.parentRunId = '{run_id}'")}
    assert set(exports) == {"finetune · sinusoid-hebb-pgpe-s0", "export best · sinusoid-hebb-pgpe-s0",
                            "export finetuned · sinusoid-hebb-pgpe-s0"}
    export = exports["export finetuned · sinusoid-hebb-pgpe-s0"]
    assert export.data.tags["source_run"] == ft.info.run_id and export.data.tags["which"] == "finetuned"
    assert export.data.tags["mlflow.note.content"].startswith("**Export of the finetuned rule**")
    assert export.data.metrics["heldout/loss"] == pytest.approx(after, abs=1e-4)


def test_params_apply_to_the_task_and_model():
    sin = applicable_params(flatten(load_config(None, ["search.algorithm=cmaes"])))
    assert "task.glyph_classes" not in sin and "search.center_learning_rate" not in sin and "search.separable" in sin
    glyphs = flatten(load_config(None, ["task.name=glyphs", "task.num_tasks=5", "network.features=conv"]))
    kept = applicable_params(glyphs)
    assert kept["task.glyph_classes"] == glyphs["task.glyph_classes"] and "network.conv_channels" in kept
    assert "task.amplitude" not in kept and "task.data_dir" not in kept
    assert run_name(glyphs, "finetune") == f"finetune · glyphs-{glyphs['rule.name']}-{glyphs['search.algorithm']}-s0"
    default = flatten(load_config(None, []))
    evolve = applicable_params(default, ray=False, gpu=False, command="evolve")
    assert "finetune.steps" not in evolve and evolve["finetune.after_evolution_steps"] == 1000
    assert [k for k in evolve if k.startswith("ray.")] == ["ray.num_actors"]      # the choice that placed it
    assert "finetune.after_evolution" not in applicable_params(default, command="finetune")
    alone = applicable_params(flatten(load_config(None, ["finetune.after_evolution=false"])), command="evolve")
    assert not [k for k in alone if k.startswith("finetune.")]


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
    curves = {FINETUNED: [[0.5, 1.0], [0.7, 1.1], [0.6, 1.2]], **learner_curves(report)}
    fig = mse_vs_tasks_seen(curves)
    rules, others = fig.axes                               # a panel of rules, a panel of baselines: bands apart
    labels = [t.get_text() for t in rules.get_legend().get_texts()]
    assert labels == [FINETUNED, CENTER, "same genome, plasticity off"] and len(rules.collections) == 3
    labels = [t.get_text() for t in others.get_legend().get_texts()]
    assert len(labels) == 6 and "feedback alignment, same initial weights" in labels and labels[-1] == FINETUNED
    assert len(others.collections) == 5                   # one 95% band per baseline; the rule's line only
    colors = {line.get_label(): line.get_color() for ax in fig.axes for line in ax.get_lines()}
    assert len(set(colors.values())) == len(colors) == 8  # one colour per learner, the same in both panels
    assert [ln.get_color() for ln in others.get_lines() if ln.get_label() == FINETUNED] == [colors[FINETUNED]]
    fig.canvas.draw()
    for ax in fig.axes:                                    # the legends are under the axes, off the data
        assert ax.get_legend().get_window_extent().y1 <= ax.get_window_extent().y0
    history = [{"generation": g, "best": -3 + g / 100, "mean": -5 + g / 100, "median": -4.0,
                "worst": -100.0 if g == 50 else -8.0} for g in range(100)]
    fig = fitness_curve(history, [{"generation": 100, "loss": 2.5}], baselines={"online SGD": 2.0})
    ax = fig.axes[0]
    lo, hi = ax.get_ylim()
    assert -7 < lo < -4.5 and -2.1 < hi < -1.5            # a capped genome at -100 does not stretch it
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "best so far (training episodes)" in labels and "online SGD, held-out (−loss)" in labels
    assert any(label.startswith("search center, held-out") for label in labels)
    # the same learner in the same colour as in mse_vs_tasks_seen; no colour means two things
    fig = fitness_curve(history, [{"generation": 100, "loss": 2.5}],
                        baselines={"online SGD of every weight, same initial weights": 2.0,
                                   "same genome, plasticity off": 3.0})
    drawn = {line.get_label().split(", held-out")[0]: line.get_color() for line in fig.axes[0].get_lines()}
    assert drawn["search center"] == colors[CENTER]
    assert drawn["online SGD of every weight, same initial weights"] == colors["online SGD of every weight, same initial weights"]
    assert len(set(drawn.values())) == len(drawn)


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


def test_evaluate_shows_progress_while_it_meta_trains_oml():
    """scripts/evaluate.py's OML baseline (minutes on the default run): a line with elapsed time and ETA."""
    from evoplast.science.analysis import oml_train
    from evoplast.evaluation import Evaluator

    from .conftest import small_config

    log = io.StringIO()
    from evoplast.runs.evaluate import oml_progress

    progress = oml_progress(4, None, stream=log)
    cfg = small_config(["task.num_tasks=2", "task.batches_per_task=2", "task.batch_size=4", "task.query_size=4",
                        "network.hidden=[8,8]", "finetune.episodes=2"])
    *_, done = oml_train(cfg, Evaluator(cfg), 4, progress=progress)
    progress.close()
    lines = log.getvalue().splitlines()
    assert done == 4 and len(lines) == 4
    assert re.fullmatch(r"OML meta-step    4/4 \| meta-loss [0-9.]+ \| elapsed \d+:\d\d \| ETA 0:00",
                        lines[-1]), lines


def test_a_copied_or_moved_store_serves_its_own_artifacts(tmp_path, monkeypatch):
    """The default store (sqlite:///mlflow.db + mlruns/ in the working directory) keeps relative artifact
    locations: moved elsewhere, its runs' artifacts are the moved files, not the original's (nor missing)."""
    import shutil

    first = tmp_path / "first"
    first.mkdir()
    monkeypatch.chdir(first)
    tracker = Tracker("sqlite:///mlflow.db")
    run_id = tracker.start_run("portable", "a run")
    tracker.log_text("the first store's file", "note.txt")
    tracker.end()
    client = MlflowClient("sqlite:///mlflow.db")
    assert client.get_experiment(tracker.experiment_id).artifact_location == f"mlruns/{tracker.experiment_id}"
    assert client.get_run(run_id).info.artifact_uri == f"mlruns/{tracker.experiment_id}/{run_id}/artifacts"
    shutil.copytree(first, tmp_path / "copy")
    (tmp_path / "copy" / "mlruns" / tracker.experiment_id / run_id / "artifacts" / "note.txt").write_text("the copy's")
    shutil.move(first, tmp_path / "moved")
    for folder, text in (("copy", "the copy's"), ("moved", "the first store's file")):
        monkeypatch.chdir(tmp_path / folder)
        got = MlflowClient("sqlite:///mlflow.db").download_artifacts(run_id, "note.txt", str(tmp_path))
        assert Path(got).read_text() == text
    # a store named by an absolute path keeps MLflow's absolute locations (it is opened from anywhere)
    absolute = Tracker(f"sqlite:///{tmp_path / 'moved' / 'mlflow.db'}")
    absolute.start_run("elsewhere", "b run")
    absolute.end()
    assert Path(absolute.client.get_experiment(absolute.experiment_id).artifact_location).is_absolute()


@pytest.mark.slow
def test_the_run_page_shows_the_rule_to_use_on_its_first_screen(tmp_path, monkeypatch, capsys):
    """In a real browser (headless Chromium on `mlflow ui`, serving a copy of the store): the run page's first
    screen shows the rule to use and its held-out number; the runs table and the metrics tab come out too."""
    shots = scripts.load("screenshots")
    if shots.find_chromium() is None:
        pytest.skip("no Chromium installed (apt-get install -y chromium)")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert scripts.load("evolve").main(TINY) == 0
    run_id = capsys.readouterr().out.split("MLflow run ")[1].split(":")[0]
    # an absolute URI: MLflow keeps one engine per URI string, and this worker may have opened "mlflow.db" elsewhere
    first = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(run_id).data.tags["mlflow.note.content"]
    first = first.splitlines()[0]
    seen = shots.serve_and_shoot(tmp_path, None, tmp_path / "img", shots.find_chromium())
    assert seen["run_id"] == run_id and seen["first_line"] == first.replace("**", "")
    assert shots.shows_first_line(seen), seen["first_screen"][:2000]
    number = first.split("**")[3]                                          # the held-out number, bold
    assert re.fullmatch(r"\d+\.\d{3}", number) and number in seen["first_screen"]
    assert seen["sections"][:2] == ["heldout", "learning"], seen["sections"]   # the held-out charts first
    assert {Path(f).name for f in seen["files"]} == {"mlflow-runs.png", "mlflow-run.png", "mlflow-metrics.png"}
    assert all(Path(f).stat().st_size > 20_000 for f in seen["files"])      # a page, not a blank


def test_the_description_leads_with_the_rule_to_use_and_names_the_baselines_that_beat_it():
    """Pure text, both kinds of task: the first line, the marked best learner, who beats the rule and by how much."""
    from evoplast.runs.run_page import evolution_description, headline, headline_metrics

    flat = flatten(load_config(None, []))
    regression = {"loss": 2.567, "loss_plasticity_off": 4.602, "sgd_plastic_weights": 2.498, "sgd_same_init": 2.573,
                  "fa_same_init": 3.011, "sgd_seed_init": 3.658, "sgd_iid_same_init": 1.731, "input_only": 2.944,
                  "sgd_plastic_weights_lr": 0.14, "learning_gain": 2.035, "episode_gain": 0.854}
    finetune = {"run_id": "f" * 32, "before": 2.567, "after": 0.618, "steps": 1000, "equations": ["ΔW3 = tuned"]}
    note = evolution_description(run_id="r" * 32, flat=flat, generations=250, report=regression,
                                 equations=["ΔW3 = evolved"], legend="legend", finetune=finetune, experiment_id="1")
    lines = note.splitlines()
    assert lines[0] == ("**Use: the fine-tuned rule (ES then BPTT)**, held-out query MSE **0.618** (lower is better; "
                        "best baseline 1.731)")
    assert lines[3] == "ΔW3 = tuned" and "ΔW3 = evolved" in note
    assert "| **fine-tuned rule (ES then BPTT)** ← best | 0.618 |  |" in note
    assert "No baseline beats the fine-tuned rule (ES then BPTT)." in note
    assert ("Baselines that beat the evolved rule (search center) before fine-tuning: online SGD on the shuffled (iid) "
            "stream, same initial weights (1.731: 0.836 lower, -33%); online SGD on the plastic weights only, same "
            "initial weights (2.498: 0.069 lower, -3%).") in note
    assert f"[finetune · {run_name(flat)}](#/experiments/1/runs/{'f' * 32})" in note
    assert headline_metrics(headline(regression, finetune)) == pytest.approx({
        "summary/recommended_loss": 0.618, "summary/evolved_loss": 2.567, "summary/finetuned_loss": 0.618,
        "summary/best_baseline_loss": 1.731, "summary/recommended_minus_best_baseline": 0.618 - 1.731})
    worse = {**finetune, "after": 2.9}                   # fine-tuning did not help: the search center is the rule
    assert headline(regression, worse)["which"] == "best"
    assert evolution_description(run_id="r", flat=flat, generations=1, report=regression, equations=["e"], legend="",
                                 finetune=worse).startswith("**Use: the evolved rule (search center)**, held-out query "
                                                            "MSE **2.567**")
    classification = {"accuracy": 0.61, "loss": 1.2, "accuracy_plasticity_off": 0.2, "loss_plasticity_off": 2.1,
                       "sgd_same_init_accuracy": 0.7, "sgd_same_init": 0.9, "sgd_same_init_lr": 0.1,
                       "prototype_accuracy": 0.65, "learning_gain": 0.9, "episode_gain": 0.3}
    note = evolution_description(run_id="r", flat=flat, generations=1, report=classification, equations=["e"],
                                 legend="")
    assert note.startswith("**Use: the evolved rule (search center)**, held-out query cross-entropy **1.200**")
    assert "| **online SGD on every weight and bias, same initial weights** ← best | 0.900 | 0.700 | 0.1 |" in note
    assert "Units: query cross-entropy" in note
