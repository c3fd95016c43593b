"""The EvoTorch ``Problem``: what is evaluated. It knows genomes and fitness, nothing of the network.

Fitness comes from a callable ``evaluate(genomes [P, D] cpu, generation) -> (fitness [P], nonfinite [P])``:
an in-process :class:`~evoplast.evaluation.Evaluator` or a :class:`~evoplast.evolution.ray_pool.RayPool`.
In EvoTorch's own distributed mode (``search.distributed``), EvoTorch copies this problem into its actors;
each copy then builds its own evaluator on the actor's device and receives the generation from the main
process before every evaluation.
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
        cfg: the run's config (used to build evaluators inside EvoTorch actors).
        solution_length: D, the genome length.
        evaluate: the fitness function; None builds an in-process evaluator lazily (EvoTorch actors).
        num_actors / num_gpus_per_actor: only for EvoTorch's distributed mode.
    """

    def __init__(self, cfg: Config, solution_length: int, evaluate: Optional[EvaluateFn] = None, *,
                 num_actors: Optional[int] = None, num_gpus_per_actor: Optional[float] = None):
        actor_kw = {}
        if num_actors:
            actor_kw = {"num_actors": num_actors, "num_gpus_per_actor": num_gpus_per_actor or None,
                        "actor_config": {"num_cpus": cfg.ray.num_cpus_per_actor}}
        super().__init__("max", solution_length=solution_length, initial_bounds=(-1.0, 1.0),
                         dtype=torch.float32, device="cpu", seed=derive_seed(cfg.seed, Purpose.SEARCH, 0),
                         **actor_kw)
        self.cfg = cfg
        self.generation = 0
        self.last_nonfinite = 0
        self.last_fitness = torch.zeros(0)   # fitness of the last evaluation (all actors' in distributed mode)
        self._evaluate_fn = evaluate
        # set by the trainer when ``evaluate`` takes ``recipe=`` (a Ray pool): () -> PopulationRecipe or None
        self.recipe_source: Optional[Callable[[int, int], object]] = None

    def begin_generation(self, generation: int) -> None:
        """Set the generation (its episodes) and reseed the search's sampler from ``(seed, generation)``."""
        self.generation = generation
        self.manual_seed(derive_seed(self.cfg.seed, Purpose.SEARCH, generation))

    def _evaluate_batch(self, batch: SolutionBatch) -> None:
        if self._evaluate_fn is None:  # inside an EvoTorch actor: evaluate on the actor's device
            from ..evaluation import Evaluator

            self._evaluate_fn = Evaluator(self.cfg, self.aux_device).fitness
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
        self.last_fitness = fitness.detach().cpu()
        batch.set_evals(fitness.to(batch.values.dtype))

    # ---- EvoTorch distributed mode: generation to the actors, non-finite counts back ----
    def seed(self, seed: int) -> None:
        """EvoTorch 0.6's actor start-up calls ``problem.seed(...)``, a method its Problem no longer has."""
        self.manual_seed(seed)

    def _make_sync_data_for_actors(self):
        return {"generation": self.generation}

    def _use_sync_data_from_main(self, received) -> None:
        # an actor's sampler is re-derived from (seed, generation, actor), so a resumed distributed run
        # continues exactly; its results depend on the number of actors (each samples its own share)
        self.begin_generation(int(received["generation"]))
        self.manual_seed(derive_seed(self.cfg.seed, Purpose.SEARCH, self.generation, 1 + (self.actor_index or 0)))

    def _make_sync_data_for_main(self):
        return {"nonfinite": self.last_nonfinite, "fitness": self.last_fitness}

    def _use_sync_data_from_actors(self, received: list) -> None:
        self.last_nonfinite = sum(int(r["nonfinite"]) for r in received)
        self.last_fitness = torch.cat([r["fitness"] for r in received])
