"""The ES outer trainer: one EvoTorch searcher over one problem, a generation at a time.

What changes during a run lives in :meth:`EvolutionTrainer.state_dict` (generation, searcher state,
fitness history); the searcher's randomness is re-derived from ``(seed, generation)`` before every
generation, so restoring that state continues a run exactly as if it had never stopped.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from ..config import Config
from .es_problem import EvaluateFn, LifetimeProblem
from ..parallel.rows import SCHEME
from ..parallel.recipes import POPULATION, sampling_of, set_sampling
from .searchers import load_searcher_state, make_searcher, search_center, search_stepsize, searcher_state


class EvolutionTrainer:
    """Evolution strategy over flat genomes.

    Args:
        cfg: the run's config.
        evaluate: fitness function ``(genomes [P, D], generation) -> (fitness [P], nonfinite [P])``.
        center: ``[D]`` initial center of the search distribution.
        recipes: ``evaluate`` also takes ``recipe=`` (a :class:`~evoplast.parallel.ray_pool.RayPool`):
            for searchers that sample from a separable Gaussian (PGPE, SNES, CEM) each generation is
            also described by its :class:`~evoplast.parallel.recipes.PopulationRecipe`, so that the
            actors regenerate their slices instead of receiving them.
    """

    def __init__(self, cfg: Config, evaluate: EvaluateFn, center: torch.Tensor, *, recipes: bool = False):
        self.cfg = cfg
        self.problem = LifetimeProblem(cfg, center.numel(), evaluate)
        self.searcher = make_searcher(self.problem, cfg.search, center.to(torch.float32))
        # rows keyed by (seed, generation, row) (sampling.py), or EvoTorch's sampler where the config asks
        set_sampling(self.searcher, SCHEME if cfg.search.sampling == "rows" else POPULATION)
        if recipes:
            from ..parallel.recipes import recipe_of

            self.problem.recipe_source = lambda popsize, seed: recipe_of(self.searcher, popsize, seed)
        self.generation = 0          # generations completed
        self.history: list[dict[str, float]] = []

    def step(self) -> dict[str, float]:
        """Run one generation (sample, evaluate, update); returns its statistics."""
        g = self.generation
        self.problem.begin_generation(g)
        t0 = time.perf_counter()
        self.searcher.step()
        seconds = time.perf_counter() - t0
        evals = self.searcher.population.evals[:, 0].detach().cpu().as_subclass(torch.Tensor)   # [P]
        n = len(evals)
        best, worst = float(evals.max()), float(evals.min())
        mean, median = float(evals.mean()), float(evals.median())
        stats = {
            "generation": g,
            "best": best, "mean": mean, "median": median, "worst": worst,
            "stepsize": search_stepsize(self.searcher),
            "nonfinite": float(self.problem.last_nonfinite),
            "seconds": seconds,
            "evals_per_s": n / seconds,
            "lifetimes_per_s": n * self.cfg.evaluation.episodes / seconds,
        }
        self.generation += 1
        self.history.append(stats)
        return stats

    def center(self) -> torch.Tensor:
        """``[D]``: the search distribution's center, the genome this run recommends."""
        return search_center(self.searcher)

    def population(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(genomes [P, D], fitness [P])`` of the last generation, best first (empty if unavailable)."""
        population = getattr(self.searcher, "population", None)
        if population is None or len(population) == 0 or self.generation == 0:
            return torch.zeros(0, self.problem.solution_length), torch.zeros(0)
        fitness = population.evals[:, 0].detach().cpu().as_subclass(torch.Tensor)
        order = torch.argsort(fitness, descending=True)
        return population.values.detach().cpu().as_subclass(torch.Tensor)[order].clone(), fitness[order].clone()

    def state_dict(self) -> dict[str, Any]:
        return {"generation": self.generation, "searcher": searcher_state(self.searcher),
                "history": [dict(h) for h in self.history], "sampling": sampling_of(self.searcher)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`. A checkpoint without ``sampling`` was made before row sampling and
        continues with the sampling it was made with (``population``); an unknown scheme is refused
        (ValueError, one line)."""
        set_sampling(self.searcher, state.get("sampling", POPULATION))
        load_searcher_state(self.searcher, state["searcher"])
        self.generation = int(state["generation"])
        self.history = [dict(h) for h in state["history"]]
