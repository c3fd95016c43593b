"""``python scripts/benchmark.py outer`` on a tiny budget: every method's row, the files, bad arguments."""

from __future__ import annotations

import json

import pytest

from evoplast.cli import UsageError
from evoplast.bench.compare import methods, step_peak_mb

from . import scripts

TINY = ["task.num_tasks=2", "task.batches_per_task=2", "task.query_size=8", "network.hidden=[8,8]",
        "evaluation.heldout_episodes=4", "evaluation.episodes=2"]


def _benchmark():
    return scripts.load("benchmark")


def test_outer_benchmark_prints_every_method_and_writes_table_json_and_plot(tmp_path, capsys):
    bench = _benchmark()
    assert bench.main(["outer", "--budget", "0.1", "--seeds", "0", "1", "--regimes", "default", "long",
                       "--threads", "1", "--out-dir", str(tmp_path), "--set", *TINY]) == 0
    out = capsys.readouterr().out
    table = (tmp_path / "outer.md").read_text()
    for name in methods():
        assert f"| {name} |" in table and f"| {name} |" in out, name
    assert "### default: lifetime of 4 steps of 8, 0.1 CPU s per run (1 thread(s))" in table and "### long: lifetime of 40 steps of 8" in table
    assert table.count("Best held-out MSE in this regime") == 2
    runs = json.loads((tmp_path / "outer.json").read_text())
    assert set(runs) == {"default", "long"}
    for regime in runs.values():
        assert set(regime) == set(methods())
        for seeds in regime.values():
            assert [r["seed"] for r in seeds] == [0, 1]
            assert all(r["steps"] >= 1 and r["seconds"] >= 0.1 and r["loss"] > 0 for r in seeds)
    assert (tmp_path / "outer.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = [json.loads(x) for x in (tmp_path / "outer.jsonl").read_text().splitlines()]   # run by run, seed by seed
    assert len(lines) == 2 * 2 * len(methods()) and [x["seed"] for x in lines[:len(methods()) + 1]] == \
        [0] * len(methods()) + [1]


def test_regimes_of_long_lifetimes_and_larger_rates():
    from evoplast.config import load_config
    from evoplast.bench.compare import parse_regime, regime_config, regime_steps

    base = load_config(None, [])
    assert parse_regime(base, "default") == (10, 1.0) and parse_regime(base, "long") == (100, 1.0)
    cfg = regime_config(base, "T4000-eta16", 3)
    assert (cfg.seed, cfg.task.batches_per_task, cfg.ray.num_actors) == (3, 400, 0)
    assert cfg.rule.eta_scale == pytest.approx(16 * base.rule.eta_scale)
    assert regime_steps(base, "T2000") == 2000 and regime_config(base, "T2000", 0).rule.eta_scale == base.rule.eta_scale
    for bad in ("T2005", "huge", "T100-eta"):
        with pytest.raises(ValueError, match="unknown regime"):
            regime_config(base, bad, 0)


def test_outer_benchmark_rejects_bad_arguments():
    bench = _benchmark()
    with pytest.raises(UsageError, match="--budget must be > 0"):
        bench.main(["outer", "--budget", "0"])
    with pytest.raises(UsageError, match="--methods matches none"):
        bench.main(["outer", "--methods", "adam"])


def test_step_peak_memory_sees_what_a_step_holds():
    import torch

    def hold_64mb():
        x = torch.ones(16 * 2**20)          # 64 MB, touched
        return float(x.sum())

    assert 55 < step_peak_mb(hold_64mb) < 120
    assert step_peak_mb(lambda: None) < 8


def test_evolve_fine_tunes_the_center_at_the_end_by_default_and_says_which_method_made_the_rule(store, capsys):
    """configs/default.yaml: finetune.after_evolution (the hybrid won the benchmark), a nested MLflow run."""
    from mlflow import MlflowClient

    assert scripts.run("evolve", [*TINY, "ray.num_actors=0", "search.generations=5",
                                  "finetune.after_evolution_steps=3", "tracking.gain_every=5"]) == 0
    out = capsys.readouterr().out
    run_id = out.split("MLflow run ")[1].split(":")[0]
    assert "Fine-tuned by BPTT (3 meta-steps" in out and "The rule to use: " in out
    from evoplast.bench.verdict import MEASURED, measured_line

    line = measured_line()                 # the verdict of issue 29, plainly, with its measured difference
    assert line in out and f"{MEASURED['diff']:+.3f} ± {MEASURED['half_width']:.3f}" in line
    assert "docs/outer-trainers.md" in line
    child = MlflowClient(store).search_runs(["1"], f"tags.mlflow.parentRunId = '{run_id}'")
    assert len(child) == 1 and child[0].data.metrics["meta/loss"] > 0
    assert f"--run-id {run_id} --which " in out


def test_population_sweep_runs_pgpe_at_each_size(tmp_path, capsys):
    from evoplast.bench.compare import method_of

    assert method_of("ES (PGPE, P=48)")[1] == ["search.popsize=48"]
    with pytest.raises(KeyError):
        method_of("ES (CMA, P=4)")
    assert _benchmark().main(["outer", "--budget", "0.05", "--seeds", "0", "--regimes", "default", "--popsizes", "4",
                              "32", "--threads", "1", "--out-dir", str(tmp_path), "--set", *TINY]) == 0
    table = (tmp_path / "outer.md").read_text()
    assert "| ES (PGPE, P=4) |" in table and "| ES (PGPE, P=32) |" in table and "| BPTT" not in table
    capsys.readouterr()
