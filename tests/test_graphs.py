"""CUDA-graph replay of a generation's lifetimes (evoplast.cuda_graphs): same numbers as the eager ops.

Runs only where CUDA is (the GPU check of ``scripts/gpu_check.py`` runs it on the device machine);
on a CPU the tests are reported as skipped, with the reason.
"""

import pytest
import torch


from evoplast.evaluation import Evaluator
from .conftest import small_config

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _population(ev, p, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return ev.spec.initial_vector() + 0.05 * torch.randn(p, ev.spec.dim, generator=gen)


def test_graphs_are_off_on_a_cpu():
    assert Evaluator(small_config(["evaluation.cuda_graph=true"]), "cpu").graphed is None


@cuda
@pytest.mark.parametrize("overrides", [
    ["rule.name=hebb", "network.plastic_layers=[3]"],
    ["rule.name=oja", "rule.granularity=neuron", "rule.eta_init=1.0", "rule.eta_scale=0.0001"],
    ["task.name=digits", "task.num_tasks=5", "task.batches_per_task=3", "task.batch_size=1",
     "network.hidden=[32]", "rule.name=hebb"],
])
def test_graph_replay_equals_eager_across_generations_and_shapes(overrides):
    graphed = Evaluator(small_config(overrides + ["evaluation.episodes=2"]), "cuda")
    eager = Evaluator(small_config(overrides + ["evaluation.episodes=2", "evaluation.cuda_graph=false"]), "cuda")
    assert graphed.graphed is not None and eager.graphed is None
    for generation, p in ((0, 8), (1, 8), (2, 5)):          # two replays of one capture, then a new shape
        genomes = _population(graphed, p, seed=generation)
        got, got_bad = graphed.fitness(genomes, generation)
        ref, ref_bad = eager.fitness(genomes, generation)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
        assert torch.equal(got_bad, ref_bad)
    assert len(graphed.graphed.captures) == 2


@cuda
def test_a_diverging_genome_is_scored_as_the_cap_in_a_replay():
    cfg = small_config(["rule.name=hebb", "rule.eta_scale=10.0", "rule.eta_init=1.0", "evaluation.episodes=2"])
    ev = Evaluator(cfg, "cuda")
    fine = ev.spec.initial_vector().expand(3, -1).clone()
    ev.fitness(fine, 0)                                               # capture on finite genomes
    wild = fine.clone()
    wild[1] += 50.0                                                   # every coefficient far out: diverges
    fitness, bad = ev.fitness(wild, 1)
    assert fitness[1].item() == -cfg.evaluation.loss_cap and bool(bad[1])
    assert torch.isfinite(fitness).all()
