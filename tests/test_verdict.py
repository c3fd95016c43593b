"""The default-pipeline verdict (issue 29): pipelines against BPTT from scratch at equal CPU time, on a tiny budget."""

from __future__ import annotations

import json

import torch

from evoplast.config import load_config
from evoplast.bench.verdict import (ABLATION, BPTT, DEFAULT, SubspaceTrainer, TopKTrainer, ablation_gap, markdown,
                              run_verdict, subspace_index, tiny)

from . import scripts


def test_verdict_returns_paired_differences_at_equal_cpu_time():
    cfg = tiny(load_config(None, []))
    v = run_verdict(cfg, [0, 1], names=[])
    default, bptt, abl = v.row(DEFAULT), v.row(BPTT), v.row(ABLATION)
    assert default.steps == cfg.search.generations + cfg.finetune.after_evolution_steps
    for seed in (0, 1):
        d = next(r for r in v.runs if r.method == DEFAULT and r.seed == seed)
        b = next(r for r in v.runs if r.method == BPTT and r.seed == seed)
        assert b.seconds >= d.seconds                        # BPTT ran until the default's CPU time was spent
        assert ABLATION in b.marks and "after ES" in d.marks
    assert default.diff.n == 2 and bptt.diff is None and abl.diff.n == 2
    assert default.diff.mean == sum(default.per_seed) / 2 - sum(bptt.per_seed) / 2
    gap = ablation_gap(v)
    assert gap.mean == sum(default.per_seed) / 2 - sum(abl.per_seed) / 2
    text = "\n".join(markdown(v))
    assert f"| {DEFAULT} |" in text and "Winner against BPTT from scratch" in text


def test_subspace_trainer_gives_the_rule_to_es_and_the_weights_to_bptt():
    cfg = tiny(load_config(None, []))
    tr = SubspaceTrainer(cfg)
    idx = subspace_index(tr.bptt.spec)
    names = [s.name for s in tr.bptt.spec.evolved]
    assert idx.numel() == 4 and {"layer3.eta", "layer3.beta", "layer3.feedback", "layer3.feedback_bias"} <= set(names)
    before = tr.best().clone()
    for _ in range(3):
        tr.step()
    after = tr.best()
    rest = torch.ones(before.numel(), dtype=torch.bool)
    rest[idx] = False
    assert not torch.equal(before[rest], after[rest])             # BPTT moved the weights
    assert not torch.equal(before[idx], after[idx])               # ES moved the rule
    torch.testing.assert_close(after[idx], tr.sub.detach())       # and BPTT left the rule to ES


def test_topk_trainer_fine_tunes_k_genomes_and_keeps_the_best_on_validation():
    cfg = tiny(load_config(None, []))
    tr = TopKTrainer(cfg, es_generations=2, k=3)
    for _ in range(4):
        tr.step()
    assert tr.bptt is not None and tr.bptt.current().shape == (3, tr.bptt.spec.dim)
    assert any(torch.equal(tr.best(), g) for g in tr.bptt.current())


def test_bench_default_script_writes_the_table_and_continues_from_its_log(tmp_path, capsys):
    argv = ["--seeds", "0", "1", "--methods", "subspace ES + BPTT", "--out-dir", str(tmp_path),
            "task.num_tasks=2", "task.batches_per_task=2", "network.hidden=[8,8]", "search.popsize=4",
            "search.generations=2", "finetune.after_evolution_steps=2", "finetune.episodes=2",
            "evaluation.episodes=2", "evaluation.heldout_episodes=4"]
    assert scripts.run("bench_default", argv) == 0
    table = (tmp_path / "default_verdict.md").read_text()
    assert "| subspace ES + BPTT |" in table and f"| {BPTT} |" in table
    log = (tmp_path / "default_verdict.jsonl").read_text().splitlines()
    assert len(log) == 2 * 3 and {json.loads(x)["seed"] for x in log} == {0, 1}
    assert scripts.run("bench_default", argv) == 0                # every run is in the log: nothing is run again
    assert (tmp_path / "default_verdict.jsonl").read_text().splitlines() == log
    assert (tmp_path / "default_verdict.md").read_text() == table
    capsys.readouterr()
