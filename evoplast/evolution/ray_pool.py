"""Ray: starting or joining a cluster, and a pool of evaluator actors that survives lost actors.

Each actor builds its own :class:`~evoplast.evaluation.Evaluator` from the config and evaluates a
contiguous slice of the population on its own device (the GPU Ray assigned it, else the CPU). Episodes
are derived from ``(seed, generation)`` inside the actor, so the fitness of a genome does not depend on
which actor, or how many, evaluate it. An actor that dies mid-generation (its process or its node lost)
is replaced and its slice evaluated again; every such event is reported to ``on_event``.

Actors are placed with Ray's ``SPREAD`` strategy: on a cluster they go to as many nodes as can hold
them, so losing one node costs as few slices as possible (GPU actors are spread by their GPUs anyway).
"""

from __future__ import annotations

import os
import socket
import time
from typing import Callable, Optional

import numpy as np
import torch

from ..config import Config, RayConfig, to_dict


class RayUnavailable(RuntimeError):
    """Ray cannot be reached, or cannot place the requested actors; the message says what to do."""


class ActorsLost(RuntimeError):
    """A slice lost its actor more often than allowed in one generation; the run stops."""


def init_ray(cfg: RayConfig, *, include_dashboard: bool = False) -> None:
    """Start a local Ray (``address=''``) with explicit resources, or join ``auto`` / ``host:port``.

    Raises :class:`RayUnavailable` within seconds when the address cannot be reached.
    """
    import ray

    if ray.is_initialized():
        return
    common = dict(include_dashboard=include_dashboard, logging_level="WARNING", log_to_driver=True,
                  configure_logging=True)
    address = cfg.address.strip()
    if address == "":
        num_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        # address="local": always a new local Ray, never a cluster that happens to run on this machine
        ray.init(address="local", num_cpus=max(os.cpu_count() or 1, int(np.ceil(cfg.num_actors * cfg.num_cpus_per_actor))),
                 num_gpus=num_gpus, **common)
        return
    if address != "auto" and not address.startswith("ray://"):
        host, _, port = address.rpartition(":")
        try:
            with socket.create_connection((host or "127.0.0.1", int(port)), timeout=5):
                pass
        except (OSError, ValueError) as exc:
            raise RayUnavailable(f"cannot reach the Ray cluster at ray.address={address!r} ({exc}); start it "
                                 f"with `ray start --head` or `ray up cluster/aws.yaml`, or set ray.address='' "
                                 f"for a local Ray") from None
    try:
        ray.init(address=address, **common)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RayUnavailable(f"cannot join the Ray cluster at ray.address={address!r}: {first}; start it with "
                             f"`ray start --head` or `ray up cluster/aws.yaml`, or set ray.address='' for a "
                             f"local Ray") from None


class EvaluatorActor:
    """Ray actor body: one evaluator on the actor's device, built from the config dict."""

    def __init__(self, cfg_dict: dict, num_threads: int):
        import ray

        from ..config import from_dict
        from ..evaluation import Evaluator

        torch.set_num_threads(max(1, num_threads))
        use_gpu = bool(ray.get_gpu_ids()) and torch.cuda.is_available()
        self.evaluator = Evaluator(from_dict(cfg_dict), "cuda" if use_gpu else "cpu")

    def info(self) -> dict:
        import ray

        return {"device": str(self.evaluator.device), "node_id": ray.get_runtime_context().get_node_id(),
                "pid": os.getpid()}

    def fitness(self, genomes: torch.Tensor, generation: int) -> tuple[torch.Tensor, torch.Tensor, float]:
        """``(fitness, nonfinite, seconds of compute in this actor)``."""
        t0 = time.perf_counter()
        fitness, nonfinite = self.evaluator.fitness(genomes, generation)
        return fitness, nonfinite, time.perf_counter() - t0


class RayPool:
    """``num_actors`` evaluator actors; :meth:`evaluate` has the signature the problem expects.

    Args:
        cfg: the run's config (``cfg.ray`` sets actors, CPUs and GPUs per actor).
        start_timeout: seconds to wait for actors to be placed and started before giving up with a
            message naming the resources that could not be found.
        replace_timeout: the same for the replacement of a lost actor. Longer: when the lost actor's
            node is gone and no other node has room, an autoscaling cluster launches and sets up a new
            node first (minutes on AWS).
        max_retries: how many times one slice may lose its actor in one generation (a replacement
            that dies before it starts counts too) before :meth:`evaluate` gives up.
        on_event: called with ``(kind, details)`` when an actor is lost (``actor_lost``) or replaced
            (``actor_replaced``, with the new actor's ``node_id``, ``device`` and ``pid``); ``details``
            always has ``generation``, ``actor`` (slice index) and ``retry`` (losses of that slice so far
            in this generation).

    ``actor_info[i]`` is ``{"device", "node_id", "pid"}`` of actor ``i``, kept current across replacements.
    """

    def __init__(self, cfg: Config, *, start_timeout: float = 120.0, replace_timeout: float = 900.0,
                 max_retries: int = 3, on_event: Optional[Callable[[str, dict], None]] = None):
        import ray

        self.cfg = cfg
        self.start_timeout = start_timeout
        self.replace_timeout = replace_timeout
        self.max_retries = max_retries
        self.on_event = on_event or (lambda kind, details: None)
        self._cfg_dict = to_dict(cfg)
        rc = cfg.ray
        self._check_feasible(rc)
        self._remote = ray.remote(EvaluatorActor).options(
            num_cpus=rc.num_cpus_per_actor, num_gpus=rc.num_gpus_per_actor, max_restarts=0,
            scheduling_strategy="SPREAD")
        self.actors = [self._new_actor() for _ in range(rc.num_actors)]
        self.actor_info = self._wait_ready(self.actors, self.start_timeout)
        self.last_timing: dict[str, float] = {}   # wall and slowest actor's compute of the last evaluate

    def _new_actor(self):
        return self._remote.remote(self._cfg_dict, max(1, int(self.cfg.ray.num_cpus_per_actor)))

    @staticmethod
    def _check_feasible(rc: RayConfig) -> None:
        import ray

        nodes = [n for n in ray.nodes() if n.get("Alive")]
        max_gpus = max((n["Resources"].get("GPU", 0.0) for n in nodes), default=0.0)
        max_cpus = max((n["Resources"].get("CPU", 0.0) for n in nodes), default=0.0)
        if rc.num_gpus_per_actor > max_gpus:
            raise RayUnavailable(f"ray.num_gpus_per_actor={rc.num_gpus_per_actor:g} but no node of the Ray cluster "
                                 f"has more than {max_gpus:g} GPUs; lower it or add GPU nodes")
        if rc.num_cpus_per_actor > max_cpus:
            raise RayUnavailable(f"ray.num_cpus_per_actor={rc.num_cpus_per_actor:g} but no node of the Ray cluster "
                                 f"has more than {max_cpus:g} CPUs; lower it")

    def _wait_ready(self, actors, timeout: float) -> list[dict]:
        import ray

        refs = [a.info.remote() for a in actors]
        ready, pending = ray.wait(refs, num_returns=len(refs), timeout=timeout)
        if pending:
            rc = self.cfg.ray
            free = ray.available_resources()
            for a in actors:   # give their resources back
                ray.kill(a)
            raise RayUnavailable(
                f"only {len(ready)} of {len(refs)} Ray actors started within {timeout:g} s: the cluster "
                f"cannot place actors of {rc.num_cpus_per_actor:g} CPU / {rc.num_gpus_per_actor:g} GPU "
                f"({free.get('CPU', 0):g} CPUs and {free.get('GPU', 0):g} GPUs free); lower ray.num_actors or the "
                f"per-actor resources")
        return ray.get(refs)

    def evaluate(self, genomes: torch.Tensor, generation: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Fitness ``[P]`` and non-finite flags ``[P]`` of ``genomes [P, D]``, slice per actor."""
        import ray

        t0 = time.perf_counter()
        bounds = np.linspace(0, genomes.shape[0], len(self.actors) + 1).round().astype(int)
        slices = [genomes[bounds[i]:bounds[i + 1]] for i in range(len(self.actors))]
        results: list = [None] * len(slices)
        retries = [0] * len(slices)
        pending = {self.actors[i].fitness.remote(s, generation): i for i, s in enumerate(slices) if len(s)}
        for i, s in enumerate(slices):
            if not len(s):
                results[i] = (torch.zeros(0), torch.zeros(0, dtype=torch.bool), 0.0)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                i = pending.pop(ref)
                try:
                    results[i] = ray.get(ref)
                except _lost_errors() as exc:
                    retries[i] = self._replace(i, generation, retries[i], exc)
                    pending[self.actors[i].fitness.remote(slices[i], generation)] = i
        self.last_timing = {"wall": time.perf_counter() - t0, "compute_max": max(r[2] for r in results)}
        return torch.cat([r[0] for r in results]), torch.cat([r[1] for r in results])

    def _replace(self, i: int, generation: int, retries: int, error: BaseException) -> int:
        """Replace lost actor ``i`` by a new one that is ready; returns the slice's retry count.

        A replacement can itself die before it starts: after a node dies without saying so, Ray keeps the
        node alive for its health check's grace period (seconds) and may place the replacement there.
        That counts as another loss of the slice, and the next replacement goes elsewhere.
        """
        import ray

        node_id = self.actor_info[i].get("node_id", "")     # where the lost actor ran ('' if never started)
        while True:
            retries += 1
            self.on_event("actor_lost", {"generation": generation, "actor": i, "retry": retries,
                                         "error": type(error).__name__, "node_id": node_id})
            if retries > self.max_retries:
                raise ActorsLost(f"slice {i} of generation {generation} lost its actor {retries} times "
                                 f"(last: {type(error).__name__}); giving up") from None
            try:   # an unavailable actor may still be running somewhere: free its resources
                ray.kill(self.actors[i], no_restart=True)
            except Exception:
                pass
            self.actors[i] = self._new_actor()
            try:
                self.actor_info[i] = self._wait_ready([self.actors[i]], self.replace_timeout)[0]
            except _lost_errors() as exc:
                error, node_id = exc, ""
                continue
            self.on_event("actor_replaced", {"generation": generation, "actor": i, "retry": retries,
                                             **self.actor_info[i]})
            return retries

    def shutdown(self) -> None:
        import ray

        for a in self.actors:
            try:
                ray.kill(a)
            except Exception:  # already gone
                pass
        self.actors = []


def _lost_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean "the actor or its node is gone", as opposed to an error in evoplast's code.

    ``RayActorError`` covers ``ActorDiedError`` (process or node dead) and ``ActorUnavailableError``
    (unreachable, e.g. its node stopped answering); the others cover a result lost with its node.
    """
    from ray.exceptions import NodeDiedError, ObjectLostError, RayActorError, WorkerCrashedError

    return (RayActorError, NodeDiedError, ObjectLostError, WorkerCrashedError)
