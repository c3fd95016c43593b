"""GPU correctness (skipped without CUDA): a population's fitness on the GPU, eager and replayed as a CUDA graph,
equals the CPU's for the same genomes and episodes, for every rule and granularity, the default config and
the cluster's paper-width model (``scripts/gpu_check.py`` keeps the throughput tables; these were its first
half). Quick shapes, so the check takes seconds on any GPU; ``python scripts/gpu_check.py`` times the real ones.
"""

import pytest
import torch

from . import scripts

gpu_check = scripts.load("gpu_check")

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: GPU correctness needs one")


@pytest.mark.parametrize("name, path, overrides, p, k", gpu_check.correctness_configs(quick=True),
                         ids=[row[0] for row in gpu_check.correctness_configs(quick=True)])
def test_gpu_fitness_equals_the_cpus_eager_and_graphed(name, path, overrides, p, k):
    from evoplast.evaluation import Evaluator

    cfg = gpu_check.config(path, overrides, f"evaluation.episodes={k}", "evaluation.fused_kernel=false")
    cpu = Evaluator(cfg, "cpu")
    genomes = gpu_check.population(cpu, p)
    ref, ref_bad = cpu.fitness(genomes, 0)
    eager_cfg = gpu_check.config(path, overrides, f"evaluation.episodes={k}", "evaluation.cuda_graph=false",
                                 "evaluation.fused_kernel=false")
    eager, eager_bad = Evaluator(eager_cfg, "cuda").fitness(genomes, 0)
    graphed_ev = Evaluator(cfg, "cuda")
    graphed, graphed_bad = graphed_ev.fitness(genomes, 0)
    rtol, atol = gpu_check.RTOL, gpu_check.ATOL
    torch.testing.assert_close(eager, ref, rtol=rtol, atol=atol)
    torch.testing.assert_close(graphed, ref, rtol=rtol, atol=atol)
    assert torch.equal(eager_bad, ref_bad) and torch.equal(graphed_bad, ref_bad)
    # a replay of the captured graph with new inputs (other genomes, the next generation's episodes)
    replay, _ = graphed_ev.fitness(genomes.flip(0), 1)
    cpu_next, _ = Evaluator(cfg, "cpu").fitness(genomes.flip(0), 1)
    torch.testing.assert_close(replay, cpu_next, rtol=rtol, atol=atol)
