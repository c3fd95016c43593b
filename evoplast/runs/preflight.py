"""Checks that run before anything starts (no MLflow run, no store file, no Ray, no temporary folder).

- :func:`memory_estimate` / :func:`check_memory`: the memory one process of an evolution needs, from the
  config alone (no tensor is allocated), against what this machine has. The estimate counts only what
  cannot be avoided, so it refuses sizes that cannot fit, never a run that would have fitted.
- :func:`check_checkpoint_dir`: the checkpoint directory can be created and written, before compute.

Imports neither ray nor mlflow.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .checkpoint import CheckpointError
from ..config import Config, ConfigError
from ..rules import coefficient_names

FLOAT = 4  # bytes of a float32


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one process needs at least (searcher in the driver, lifetimes in an evaluating process)."""

    genome: int           # D, numbers in one genome
    model: int            # numbers of one decoded model (weights, biases, feedback, coefficients)
    weights: int          # numbers of the plastic state (all weight matrices) of one lifetime
    searcher: int         # bytes: the searcher's population and noise (and full CMA-ES's covariance)
    driver: int           # bytes: the searcher, plus evaluation if in-process
    evaluator: int        # bytes: one evaluating process (decoded genomes of its slice, lifetimes in flight)
    detail: str           # how the evaluator's part comes about, for the error message
    detail_searcher: str  # how the searcher's part comes about


def _layer_sizes(cfg: Config) -> tuple[int, ...]:
    if cfg.task.name == "sinusoid":
        n_in, n_out = cfg.task.num_tasks + 1, 1
    else:
        n_out = cfg.task.output_classes or cfg.task.num_tasks
        n_in = cfg.task.image_size ** 2
        if cfg.network.features == "conv":
            n_in = cfg.network.conv_channels[-1] * 4 * 4   # evoplast.features.POOL = 4
    return (n_in, *cfg.network.hidden, n_out)


def memory_estimate(cfg: Config) -> MemoryEstimate:
    """The least memory an evolution of ``cfg`` needs per process; pure arithmetic on the config."""
    sizes = _layer_sizes(cfg)
    layers = len(sizes) - 1
    plastic = sorted(set(cfg.network.plastic_layers)) or list(range(1, layers + 1))
    n_out = sizes[-1]
    weights = sum(sizes[l] * sizes[l - 1] for l in range(1, layers + 1))
    biases = sum(sizes[1:])
    per_coef = {"layer": lambda o, i: 1, "neuron": lambda o, i: o, "synapse": lambda o, i: o * i}[cfg.rule.granularity]
    n_coef = {"theta": len(cfg.rule.terms)}
    feedback = sum(sizes[l] * n_out + sizes[l] for l in plastic)
    coefs = sum(n_coef.get(c, 1) * per_coef(sizes[l], sizes[l - 1])
                for l in plastic for c in coefficient_names(cfg.rule.name))
    g = cfg.genome
    genome = ((weights + biases) * g.evolve_init_weights + feedback * g.evolve_feedback
              + len(plastic) * g.evolve_beta + coefs * g.evolve_rule)
    model = weights + biases + feedback + len(plastic) + coefs
    p = cfg.search.popsize
    # the searcher holds the population [P, D] and its sampled noise; full CMA-ES a D x D covariance and more
    searcher = 2 * p * genome * FLOAT
    if cfg.search.algorithm == "cmaes" and not cfg.search.separable:
        searcher += 3 * genome * genome * FLOAT
    # an evaluating process decodes its whole slice [P_slice, model], then runs P_chunk x K lifetimes, each
    # holding its weights and their update
    actors = cfg.ray.num_actors
    if actors == "auto":            # decided later (evolution/placement.py): in-process unless there is a cluster
        from ..parallel.placement import detect_cluster

        actors = 1 if cfg.ray.address or (cfg.ray.address is None and detect_cluster()[0]) else 0
    slice_ = math.ceil(p / actors) if actors else p
    chunk = min(cfg.evaluation.chunk_size or slice_, slice_)
    evaluator = (slice_ * model + 2 * chunk * cfg.evaluation.episodes * weights) * FLOAT
    driver = searcher + (evaluator if actors == 0 else 0)
    detail = (f"{chunk:,} genomes x {cfg.evaluation.episodes} episodes = {chunk * cfg.evaluation.episodes:,} "
              f"lifetimes of {weights:,} weights each")
    detail_searcher = f"population {p:,} x genome of {genome:,} numbers"
    return MemoryEstimate(genome, model, weights, searcher, driver, evaluator, detail, detail_searcher)


def available_memory() -> int:
    """Bytes of memory this machine can still give (``MemAvailable``; total physical memory elsewhere)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def _gib(n: int) -> str:
    return f"{n / 2 ** 30:,.1f} GiB"


def check_memory(cfg: Config, available: int | None = None, gpu_memory: int | None = None) -> MemoryEstimate:
    """Raise :class:`ConfigError` (one line) when one process of the run cannot fit in memory.

    The driver and, with Ray actors, one actor are each compared with ``available`` (this machine's
    available memory by default; on a cluster the actors' nodes are assumed no larger than this one).
    In-process evaluation on a GPU is also compared with ``gpu_memory`` (the device's total memory).
    """
    est = memory_estimate(cfg)
    available = available_memory() if available is None else available
    fix_eval = "lower search.popsize, evaluation.episodes or network.hidden, or set evaluation.chunk_size"
    fix_search = "lower search.popsize or the genome (genome.evolve_init_weights, rule.granularity)"
    in_driver = est.evaluator if cfg.ray.num_actors == 0 else 0
    searcher_first = est.searcher >= in_driver
    checks = [("this process", est.driver, est.detail_searcher if searcher_first else est.detail,
               fix_search if searcher_first else fix_eval)]
    if cfg.ray.num_actors:
        checks.append(("each Ray actor", est.evaluator, est.detail, fix_eval))
    for who, need, detail, fix in checks:
        if need > available:
            raise ConfigError(f"the run needs at least {_gib(need)} in {who} ({detail}), more than the "
                              f"{_gib(available)} of memory available here; {fix}")
    if cfg.ray.num_actors == 0 and cfg.device in ("auto", "cuda"):
        if gpu_memory is None:
            import torch

            if torch.cuda.is_available():
                gpu_memory = torch.cuda.get_device_properties(0).total_memory
        if gpu_memory is not None and est.evaluator > gpu_memory:
            raise ConfigError(f"the run needs at least {_gib(est.evaluator)} of GPU memory ({est.detail}), more "
                              f"than the GPU's {_gib(gpu_memory)}; {fix_eval}")
    return est


def check_checkpoint_dir(directory: str | Path) -> None:
    """Raise :class:`CheckpointError` (one line) unless checkpoints can be written under ``directory``.

    Creates nothing that stays: the nearest existing folder gets a temporary file, removed at once.
    """
    path = Path(directory)
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise CheckpointError(f"checkpoint.dir={str(directory)!r} cannot be created: {str(probe)!r} is not a "
                              f"directory; choose another checkpoint.dir")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        raise CheckpointError(f"checkpoint.dir={str(directory)!r} cannot be written ({exc.strerror or exc} in "
                              f"{str(probe)!r}); choose another checkpoint.dir") from None


def check_device(cfg: Config, cuda: bool | None = None) -> None:
    """Raise :class:`ConfigError` (one line) for ``device=cuda`` on a machine where torch sees no CUDA device
    (``cuda``: whether it does; default: ask torch)."""
    if cfg.device != "cuda":
        return
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    if not cuda:
        import torch

        why = "this torch is built without CUDA" if torch.version.cuda is None else "torch sees no CUDA device"
        raise ConfigError(f"device=cuda but {why}; use device=auto (a GPU when there is one) or device=cpu")


def check_data(cfg: Config) -> None:
    """Raise the task's own one-line error when its data cannot serve the config (a missing dataset folder,
    too few classes or images); checked before a store is opened, so nothing is left behind."""
    if cfg.task.name == "sinusoid":
        return
    from ..tasks import make_task

    make_task(cfg.task)


def preflight(cfg: Config) -> MemoryEstimate:
    """Every check of the config against this machine that needs no service: device, memory, checkpoint
    folder, the task's data."""
    check_device(cfg)
    est = check_memory(cfg)
    check_checkpoint_dir(cfg.checkpoint.dir)
    check_data(cfg)
    return est
