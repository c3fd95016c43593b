"""Evolution end to end on tiny configs: improvement, searchers, resume, MLflow contents, faults."""

import math

import pytest
import torch
from mlflow.tracking import MlflowClient

from evoplast.runs.checkpoint import load_checkpoint

from evoplast.evaluation import Evaluator
from evoplast.runs.evolve import resolve_resume, resume_config, run_evolution
from evoplast.trainers.searchers import SEARCHERS
from .conftest import small_config

TINY = ["task.num_tasks=3", "task.batches_per_task=8", "task.batch_size=4", "task.query_size=8",
        "network.hidden=[12,12]", "network.plastic_layers=[3]", "rule.name=hebb", "rule.eta_init=1.0",
        "rule.eta_scale=0.03",
        "genome.evolve_init_weights=true", "evaluation.episodes=4", "evaluation.heldout_episodes=8",
        "search.popsize=16", "search.stdev_init=0.05", "tracking.gain_every=5", "checkpoint.every=5",
        "finetune.after_evolution=false"]   # the scripts' evolutions end without the (minutes of) BPTT fine-tune


def tiny(*extra):
    return small_config(TINY + list(extra))


def quiet(_line):
    pass


def test_evolution_improves_and_the_genome_learns(store):
    cfg = tiny("search.generations=150")
    result = run_evolution(cfg, out=quiet)
    assert result.status == "FINISHED" and result.generations == 150
    first, last = result.history[0], result.history[-1]
    assert last["median"] > first["median"] + 0.3, (first, last)
    ev = Evaluator(cfg)
    start = ev.score(ev.spec.initial_vector().reshape(1, -1)).loss.item()
    assert result.report["loss"] < start - 1.0
    assert result.report["learning_gain"] > 0.2       # the evolved genome learns in its lifetime,
    assert result.report["episode_gain"] > 0.2        # and what it learns is its own episode's
    # the run is in MLflow, with one metric value per generation and the artifacts a user looks for
    client = MlflowClient(store)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(result.run_id, "search/best")] == list(range(1, 151))
    assert len(client.get_metric_history(result.run_id, "learning/episode_gain")) == 31   # step 0, then every 5
    assert run.data.params["search.popsize"] == "16" and "version.torch" in run.data.params
    names = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"config.yaml", "best_genome.pt", "population.pt", "fitness_curve.png", "mse_vs_tasks_seen.png",
            "report.json", "checkpoint"} <= names
    local = client.download_artifacts(result.run_id, "best_genome.pt")
    saved = torch.load(local, weights_only=True)
    assert torch.equal(saved["genome"], result.center)
    assert math.isclose(run.data.metrics["heldout/loss"], result.report["loss"], rel_tol=1e-6)


@pytest.mark.parametrize("algorithm", sorted(SEARCHERS))
def test_resume_equals_uninterrupted(store, algorithm):
    extra = [f"search.algorithm={algorithm}", "search.generations=8", "tracking.gain_every=4",
             "checkpoint.every=3"]
    if algorithm == "cmaes":
        extra.append("search.separable=false")
    if algorithm == "cem":
        extra.append("search.elite_ratio=0.25")
    cfg = tiny(*extra, "search.popsize=8", "network.hidden=[4,4]")
    whole = run_evolution(cfg, out=quiet)
    part = run_evolution(cfg, out=quiet, stop_after=5)
    assert part.status == "KILLED" and part.generations == 5
    assert MlflowClient(store).get_run(part.run_id).info.status == "KILLED"
    checkpoint, _ = resolve_resume(part.run_id)
    resumed = run_evolution(resume_config(checkpoint, []), resume=checkpoint, out=quiet)
    assert resumed.run_id == part.run_id and resumed.generations == 8
    assert [h["best"] for h in resumed.history] == [h["best"] for h in whole.history]
    assert torch.equal(resumed.center, whole.center)
    history = MlflowClient(store).get_metric_history(part.run_id, "search/best")
    assert sorted(m.step for m in history) == list(range(1, 9))
    assert MlflowClient(store).get_run(part.run_id).info.status == "FINISHED"


def test_resume_refuses_to_change_the_experiment(store):
    part = run_evolution(tiny("search.generations=4"), out=quiet, stop_after=2)
    checkpoint, _ = resolve_resume(part.run_id)
    from evoplast.config import ConfigError

    with pytest.raises(ConfigError, match="rule.name cannot change when resuming"):
        resume_config(checkpoint, ["rule.name=oja"])
    assert resume_config(checkpoint, ["search.generations=10"]).search.generations == 10


def test_diverging_population_does_not_crash(store):
    cfg = tiny("search.generations=3", "rule.name=oja", "rule.eta_scale=50", "rule.eta_init=1.0",
               "search.stdev_init=1.0", "network.plastic_layers=[]")
    result = run_evolution(cfg, out=quiet)
    assert result.status == "FINISHED"
    assert sum(h["nonfinite"] for h in result.history) > 0
    assert all(math.isfinite(h["best"]) for h in result.history)
    assert all(h["worst"] >= -cfg.evaluation.loss_cap for h in result.history)


def test_checkpoint_file_is_self_describing(store):
    result = run_evolution(tiny("search.generations=2"), out=quiet)
    data = load_checkpoint(result.checkpoint)
    assert data["format"] == "evoplast.runs.checkpoint" and data["mlflow_run_id"] == result.run_id
    assert data["trainer"]["generation"] == 2 and "search:" in data["config_yaml"]


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    """A write that dies half-way leaves the previous checkpoint whole and no temporary file."""
    from evoplast.runs import checkpoint as ckpt

    path = tmp_path / "run" / "latest.pt"
    ckpt.save_checkpoint(path, {"generation": 1, "x": torch.arange(10)})
    real_save = torch.save

    def dies_half_way(obj, fh, *a, **kw):
        real_save(obj, fh, *a, **kw)
        fh.truncate(fh.tell() // 2)               # half the bytes are on disk ...
        raise KeyboardInterrupt                   # ... when the process is interrupted

    monkeypatch.setattr(ckpt.torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(path, {"generation": 2, "x": torch.arange(1000)})
    monkeypatch.setattr(ckpt.torch, "save", real_save)
    assert ckpt.load_checkpoint(path)["generation"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["latest.pt"]
    # and a file that is itself cut short is reported in one line
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ckpt.CheckpointError, match="corrupt or truncated"):
        ckpt.load_checkpoint(path)


def test_separable_cmaes_improves_on_a_toy_problem_with_an_o_d_recipe():
    """search.algorithm=cmaes with search.separable=true (the default): diagonal CMA-ES, sampled by rows,
    whose population travels as m, A (D numbers each) and sigma; on a 200-dimensional shifted sphere it
    closes three quarters of the squared distance to the optimum in 60 generations."""
    from evoplast.parallel.recipes import RowCMAES
    from evoplast.trainers.es import ESTrainer

    d = 200
    target = torch.linspace(-1, 1, d)
    sizes = []

    def sphere(genomes, generation, recipe=None):
        sizes.append(recipe.nbytes)
        assert torch.equal(recipe.sample(0, len(genomes)), genomes)
        return -((genomes - target) ** 2).sum(1), torch.zeros(len(genomes), dtype=torch.bool)

    cfg = tiny("search.algorithm=cmaes", "search.popsize=16", "search.stdev_init=0.3")
    trainer = ESTrainer(cfg, torch.zeros(d), sphere, recipes=True)
    assert isinstance(trainer.searcher, RowCMAES) and trainer.searcher.separable
    start = float(((trainer.center() - target) ** 2).sum())
    for _ in range(60):
        trainer.step()
    end = float(((trainer.center() - target) ** 2).sum())
    assert end < 0.35 * start, (start, end)     # measured: 67.3 -> 15.6
    assert set(sizes) == {(2 * d + 1) * 4}            # m [D], A [D], sigma []: float32, whatever the popsize
