"""The workloads the benchmarks time (``scripts/bench_*.py``): model configs and populations shared by them."""

from __future__ import annotations

from pathlib import Path

import torch

from ..learners import NetState, PlasticLearner

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "default.yaml"
SMALL = ["network.hidden=[40,40]", "task.batches_per_task=10", "task.batch_size=8"]          # 100 steps of 8
PAPER_WIDTH = ["network.hidden=[300,300]", "task.batches_per_task=40", "task.batch_size=32"]  # 400 steps of 32

# The model the lifetime and memory benchmarks measure (and docs/performance.md reports): oja on every layer.
OJA_EVERY_LAYER = ["rule.name=oja", "rule.eta_scale=0.01", "rule.batch_reduction=sum", "network.plastic_layers=[]",
                   "finetune.after_evolution=false"]


def benchmark_population(spec, p: int, noise: float = 0.01):
    """``[p, D]`` genomes: the initial genome with every segment but eta perturbed by ``noise`` x N(0, 1).
    Eta keeps its initial value: noise on it would give some genomes a negative (growing) rule, and a
    diverged lifetime is not what a benchmark should time (every lifetime here stays finite, checked)."""
    center = spec.initial_vector()
    raw = spec.split(center + noise * torch.randn(p, spec.dim))
    fixed = spec.split(center)
    return spec.join({n: fixed[n].expand_as(v) if n.endswith(".eta") else v for n, v in raw.items()})


class RowMajorLearner(PlasticLearner):
    """The eager learner with its weights in PyTorch's default row-major layout: the layout that
    :func:`evoplast.network.column_major` replaced, kept here to measure what that bought."""

    def init_state(self, params):
        state = super().init_state(params)
        return NetState(tuple(w.contiguous() for w in state.weights), state.biases)
