"""ES as an outer trainer: the EvoTorch searchers of :mod:`evoplast.evolution` behind the common protocol."""

from __future__ import annotations

from typing import Any, Optional

from torch import Tensor

from ..config import Config
from .es_problem import EvaluateFn
from .es_search import EvolutionTrainer


class ESTrainer:
    """One generation per :meth:`step` of ``cfg.search`` (PGPE, CMA-ES, SNES, XNES, CEM).

    Args:
        cfg: the run's config.
        genome: ``[D]`` initial center (default: the genome spec's initial vector).
        evaluate: fitness function ``(genomes [P, D], generation) -> (fitness [P], nonfinite [P])``;
            default: an in-process :class:`~evoplast.evaluation.Evaluator` (a Ray pool's ``evaluate``
            spreads it over actors).
    """

    name = "es"

    def __init__(self, cfg: Config, genome: Optional[Tensor] = None, evaluate: Optional[EvaluateFn] = None):
        from ..evaluation import Evaluator

        self.cfg = cfg
        if evaluate is None or genome is None:
            ev = Evaluator(cfg)
            evaluate = evaluate or ev.fitness
            genome = ev.spec.initial_vector() if genome is None else genome
        self.inner = EvolutionTrainer(cfg, evaluate, genome)

    def step(self) -> dict[str, float]:
        s = self.inner.step()
        return {"meta_loss": -s["mean"], "best_loss": -s["best"], "stepsize": s["stepsize"],
                "lifetimes": float(round(s["evals_per_s"] * s["seconds"]) * self.cfg.evaluation.episodes),
                "seconds": s["seconds"], "nonfinite": s["nonfinite"]}

    def best(self) -> Tensor:
        """``[D]`` the search distribution's center."""
        return self.inner.center()

    def state_dict(self) -> dict[str, Any]:
        return {"trainer": self.name, **self.inner.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)
