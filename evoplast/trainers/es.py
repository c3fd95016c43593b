"""ES as an outer trainer: one EvoTorch searcher over one problem, a generation at a time.

:class:`LifetimeProblem` is what is evaluated (genomes and fitness, nothing of the network); :class:`ESTrainer`
steps the searcher of ``cfg.search`` over it. What changes during a run lives in :meth:`ESTrainer.state_dict`
(generation, searcher state, fitness history); the searcher's randomness is re-derived from
``(seed, generation)`` before every generation, so restoring that state continues a run exactly as if it had
never stopped.

Fitness comes from a callable ``evaluate(genomes [P, D] cpu, generation) -> (fitness [P], nonfinite [P])``:
an in-process :class:`~evoplast.evaluation.Evaluator` or a :class:`~evoplast.parallel.ray_pool.RayPool`
(evoplast's one actor system; EvoTorch's own distributed mode is not used).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional

import torch
from evotorch import Problem, SolutionBatch

from ..config import Config
from ..parallel.recipes import POPULATION, sampling_of, set_sampling
from ..parallel.rows import SCHEME
from ..seeding import Purpose, derive_seed
from .searchers import load_searcher_state, make_searcher, search_center, search_stepsize, searcher_state

# the outer trainers' common metrics of a generation (the rest of a step's row is ES's own statistics)
ES_METRICS = ("meta_loss", "best_loss", "stepsize", "lifetimes", "seconds", "nonfinite")

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


class ESTrainer:
    """An evolution strategy over flat genomes, one generation per :meth:`step`, as an outer trainer
    (:class:`~evoplast.trainers.base.OuterTrainer`): ``cfg.search`` names the EvoTorch searcher (PGPE,
    CMA-ES, SNES, XNES, CEM).

    Args:
        cfg: the run's config.
        genome: ``[D]`` initial center of the search distribution (default: the genome spec's initial vector).
        evaluate: fitness function ``(genomes [P, D], generation) -> (fitness [P], nonfinite [P])``; default:
            an in-process :class:`~evoplast.evaluation.Evaluator` (a Ray pool's ``evaluate`` spreads it over
            actors).
        recipes: ``evaluate`` also takes ``recipe=`` (a :class:`~evoplast.parallel.ray_pool.RayPool`):
            for searchers that sample from a separable Gaussian (PGPE, SNES, CEM) each generation is
            also described by its :class:`~evoplast.parallel.recipes.PopulationRecipe`, so that the
            actors regenerate their slices instead of receiving them.
    """

    name = "es"

    def __init__(self, cfg: Config, genome: Optional[torch.Tensor] = None, evaluate: Optional[EvaluateFn] = None, *,
                 recipes: bool = False):
        self.cfg = cfg
        if evaluate is None or genome is None:
            from ..evaluation import Evaluator

            ev = Evaluator(cfg)
            evaluate = evaluate or ev.fitness
            genome = ev.spec.initial_vector() if genome is None else genome
        center = genome
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
        """Run one generation (sample, evaluate, update). Returns its statistics (``best``, ``mean``, ``median``,
        ``worst`` fitness, ``stepsize``, ``nonfinite``, ``seconds``, ``evals_per_s``, ...) and the outer trainers'
        common metrics (``meta_loss`` = -mean fitness, ``best_loss``, ``lifetimes``)."""
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
            "generation": float(g),
            "best": best, "mean": mean, "median": median, "worst": worst,
            "stepsize": search_stepsize(self.searcher),
            "nonfinite": float(self.problem.last_nonfinite),
            "seconds": seconds,
            "evals_per_s": n / seconds,
            "lifetimes_per_s": n * self.cfg.evaluation.episodes / seconds,
        }
        stats |= {"meta_loss": -mean, "best_loss": -best, "lifetimes": float(n * self.cfg.evaluation.episodes)}
        self.generation += 1
        self.history.append(stats)
        return stats

    def best(self) -> torch.Tensor:
        """``[D]`` the genome the trainer recommends: the search distribution's center."""
        return self.center()

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
        return {"trainer": self.name, "generation": self.generation, "searcher": searcher_state(self.searcher),
                "history": [dict(h) for h in self.history], "sampling": sampling_of(self.searcher)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`. A checkpoint without ``sampling`` was made before row sampling and
        continues with the sampling it was made with (``population``); an unknown scheme is refused
        (ValueError, one line)."""
        set_sampling(self.searcher, state.get("sampling", POPULATION))
        load_searcher_state(self.searcher, state["searcher"])
        self.generation = int(state["generation"])
        self.history = [dict(h) for h in state["history"]]
