"""How the search distribution moves: EvoTorch searchers from config, and their checkpointable state.

``SEARCHERS`` maps each ``search.algorithm`` to a builder ``(problem, cfg, center [D]) -> SearchAlgorithm``.
:func:`searcher_state` / :func:`load_searcher_state` turn a searcher's changing numbers into a dict of
tensors and plain values (loadable with ``torch.load(weights_only=True)``) and back, so a resumed run
continues exactly where the checkpoint left it.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from evotorch import SolutionBatch
from evotorch.algorithms import CEM, CMAES, PGPE, SNES, XNES
from evotorch.algorithms.searchalgorithm import SearchAlgorithm
from evotorch.distributions import Distribution

from ..config import SearchConfig


def _ranking(cfg: SearchConfig, default: str) -> str:
    return default if cfg.ranking_method == "default" else cfg.ranking_method


def _cmaes(problem, cfg: SearchConfig, center: torch.Tensor) -> SearchAlgorithm:
    if cfg.ranking_method not in ("default",):
        raise ValueError("CMA-ES uses its own rank weights; leave search.ranking_method=default")
    return CMAES(problem, stdev_init=cfg.stdev_init, popsize=cfg.popsize, center_init=center,
                 separable=cfg.separable)


def _pgpe(problem, cfg: SearchConfig, center: torch.Tensor) -> SearchAlgorithm:
    lr = cfg.center_learning_rate if cfg.center_learning_rate is not None else 0.05
    optimizer_config = {}
    if cfg.optimizer == "clipup":
        optimizer_config["max_speed"] = cfg.max_speed if cfg.max_speed is not None else 2 * lr
    return PGPE(problem, popsize=cfg.popsize, center_learning_rate=lr,
                stdev_learning_rate=cfg.stdev_learning_rate if cfg.stdev_learning_rate is not None else 0.1,
                stdev_init=cfg.stdev_init, optimizer=cfg.optimizer, optimizer_config=optimizer_config,
                ranking_method=_ranking(cfg, "centered"), center_init=center)


def _snes(problem, cfg: SearchConfig, center: torch.Tensor) -> SearchAlgorithm:
    return SNES(problem, stdev_init=cfg.stdev_init, popsize=cfg.popsize,
                center_learning_rate=cfg.center_learning_rate, stdev_learning_rate=cfg.stdev_learning_rate,
                ranking_method=_ranking(cfg, "nes"), center_init=center)


def _xnes(problem, cfg: SearchConfig, center: torch.Tensor) -> SearchAlgorithm:
    return XNES(problem, stdev_init=cfg.stdev_init, popsize=cfg.popsize,
                center_learning_rate=cfg.center_learning_rate, stdev_learning_rate=cfg.stdev_learning_rate,
                ranking_method=_ranking(cfg, "nes"), center_init=center)


def _cem(problem, cfg: SearchConfig, center: torch.Tensor) -> SearchAlgorithm:
    return CEM(problem, popsize=cfg.popsize, parenthood_ratio=cfg.elite_ratio, stdev_init=cfg.stdev_init,
               center_init=center)


SEARCHERS: dict[str, Callable[[Any, SearchConfig, torch.Tensor], SearchAlgorithm]] = {
    "cmaes": _cmaes, "pgpe": _pgpe, "snes": _snes, "xnes": _xnes, "cem": _cem,
}


def make_searcher(problem, cfg: SearchConfig, center: torch.Tensor) -> SearchAlgorithm:
    """The EvoTorch searcher of ``cfg.algorithm`` starting at ``center [D]``."""
    return SEARCHERS[cfg.algorithm](problem, cfg, center)


def search_center(searcher: SearchAlgorithm) -> torch.Tensor:
    """``[D]``: the center (mean) of the search distribution: the genome the run recommends."""
    return searcher.status["center"].detach().cpu().as_subclass(torch.Tensor).clone()


def search_stepsize(searcher: SearchAlgorithm) -> float:
    """A scalar step size: CMA-ES's sigma, or the mean stdev of a Gaussian searcher."""
    if isinstance(searcher, CMAES):
        diag_std = searcher.C.sqrt() if searcher.separable else searcher.C.diagonal().sqrt()
        return float(searcher.sigma) * float(diag_std.mean())
    return float(searcher._distribution.parameters["sigma"].mean())


# --------------------------------------------------------------------------------------------------
# Checkpointable state. What is skipped is rebuilt by the constructor or re-sampled every step.

_SKIP = {"_problem", "_population", "_before_step_hook", "_after_step_hook", "_log_hook", "_end_of_run_hook",
         "_LazyReporter__getters", "_LazyReporter__computed", "_first_step_datetime", "_step",
         "DISTRIBUTION_TYPE", "DISTRIBUTION_PARAMS", "_SinglePopulationAlgorithmMixin__exclude",
         "_param_groups"}


def _export(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().as_subclass(torch.Tensor).clone()
    if isinstance(value, (np.floating, np.integer, np.bool_)):  # before float: np.float64 is a float
        return value.item()
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, Distribution):
        return {"__distribution__": {k: _export(v) for k, v in value.parameters.items()}}
    if isinstance(value, torch.optim.Optimizer):
        return {"__torch_optimizer__": value.state_dict()}
    if type(value).__module__.startswith("evotorch.optimizers"):
        return {"__object__": {k: _export(v) for k, v in vars(value).items() if k not in _SKIP
                               and _exportable(v)}}
    raise TypeError(f"cannot checkpoint a {type(value).__name__}")


def _exportable(value: Any) -> bool:
    try:
        _export(value)
        return True
    except TypeError:
        return False


def searcher_state(searcher: SearchAlgorithm) -> dict[str, Any]:
    """The searcher's changing state as tensors and plain values (``torch.save``-able, weights_only).

    Includes the last population with its fitness: EvoTorch's Gaussian searchers (PGPE, SNES, XNES,
    CEM) update their distribution from it at the start of the next step.
    """
    state = {k: _export(v) for k, v in vars(searcher).items() if k not in _SKIP and _exportable(v)}
    population = getattr(searcher, "_population", None)
    if population is not None and len(population) > 0:
        state["__population__"] = {"values": _export(population.values), "evals": _export(population.evals)}
    return state


def _restore(target: Any, name: str, value: Any) -> None:
    current = getattr(target, name)
    if isinstance(value, dict) and "__distribution__" in value:
        params = {k: v.to(current.device) if isinstance(v, torch.Tensor) else v
                  for k, v in value["__distribution__"].items()}
        setattr(target, name, current.modified_copy(**params))
    elif isinstance(value, dict) and "__torch_optimizer__" in value:
        current.load_state_dict(value["__torch_optimizer__"])
    elif isinstance(value, dict) and "__object__" in value:
        for k, v in value["__object__"].items():
            _restore(current, k, v)
    elif isinstance(value, torch.Tensor) and isinstance(current, torch.Tensor):
        setattr(target, name, value.to(current.device, current.dtype))
    else:
        setattr(target, name, value)


def load_searcher_state(searcher: SearchAlgorithm, state: dict[str, Any]) -> None:
    """Put ``state`` (from :func:`searcher_state`) into a searcher built with the same config."""
    for name, value in state.items():
        if name == "__population__":
            problem = searcher.problem
            batch = SolutionBatch(problem, popsize=value["values"].shape[0], device=problem.device, empty=True)
            batch.set_values(value["values"].to(problem.device, problem.dtype))
            batch.set_evals(value["evals"].to(problem.device, problem.eval_dtype))
            searcher._population = batch
        else:
            _restore(searcher, name, value)
