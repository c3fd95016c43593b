"""The EvoTorch ``Problem``: what is evaluated. It knows genomes and fitness, nothing of the network.

Fitness comes from a callable ``evaluate(genomes [P, D] cpu, generation) -> (fitness [P], nonfinite [P])``:
an in-process :class:`~evoplast.evaluation.Evaluator` or a :class:`~evoplast.parallel.ray_pool.RayPool`
(evoplast's one actor system; EvoTorch's own distributed mode is not used).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from evotorch import Problem, SolutionBatch

from ..config import Config
from ..seeding import Purpose, derive_seed

EvaluateFn = Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]


class LifetimeProblem(Problem):
    """Maximise fitness = -query loss of one batched lifetime per population.

    Args:
        cfg: the run's config (its seed).
        solution_length: D, the genome length.
        evaluate: the fitness function ``(genomes [P, D], generation) -> (fitness [P], nonfinite [P])``.
    """

    def __init__(self, cfg: Config, solution_length: int, evaluate: EvaluateFn):
        super().__init__("max", solution_length=solution_length, initial_bounds=(-1.0, 1.0),
                         dtype=torch.float32, device="cpu", seed=derive_seed(cfg.seed, Purpose.SEARCH, 0))
        self.cfg = cfg
        self.generation = 0
        self.last_nonfinite = 0
        self.sample_seconds = float("nan")    # the driver's row sampling of this generation (sampling.py)
        self._evaluate_fn = evaluate
        # set by the trainer when ``evaluate`` takes ``recipe=`` (a Ray pool): () -> PopulationRecipe or None
        self.recipe_source: Optional[Callable[[int, int], object]] = None

    def begin_generation(self, generation: int) -> None:
        """Set the generation (its episodes) and reseed the search's sampler from ``(seed, generation)``."""
        self.generation = generation
        self.sample_seconds = float("nan")
        self.manual_seed(derive_seed(self.cfg.seed, Purpose.SEARCH, generation))

    def _evaluate_batch(self, batch: SolutionBatch) -> None:
        # EvoTorch hands out a ReadOnlyTensor subclass whose __torch_function__ would tax every op of the
        # lifetime (measured 2x); the lifetime gets a plain tensor
        genomes = batch.values.detach().cpu().as_subclass(torch.Tensor)
        recipe = None
        if self.recipe_source is not None:   # the population as (distribution, seed): O(D) to the actors
            recipe = self.recipe_source(len(genomes), derive_seed(self.cfg.seed, Purpose.SEARCH, self.generation))
        if recipe is not None:
            fitness, nonfinite = self._evaluate_fn(genomes, self.generation, recipe=recipe)
        else:
            fitness, nonfinite = self._evaluate_fn(genomes, self.generation)
        self.last_nonfinite = int(nonfinite.sum())
        batch.set_evals(fitness.to(batch.values.dtype))
