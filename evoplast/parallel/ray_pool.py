"""Ray: starting or joining a cluster, and a pool of evaluator actors that survives lost actors.

Each actor builds its own :class:`~evoplast.evaluation.Evaluator` from the config and evaluates
contiguous chunks of the population on its own device (the GPU Ray assigned it, else the CPU), one
chunk at a time, the next going to whichever actor is free. Episodes are derived from
``(seed, generation)`` inside the actor, so the fitness of a genome does not depend on which actor, or
how many, evaluate it, nor on the chunks. An actor that dies mid-generation (its process or its node
lost) is replaced and its chunk evaluated again; every such event is reported to ``on_event``.

Actors are placed with Ray's ``SPREAD`` strategy: on a cluster they go to as many nodes as can hold
them, so losing one node costs as few chunks as possible (GPU actors are spread by their GPUs anyway).
"""

from __future__ import annotations

import os
import socket
import time
from typing import Callable, Optional

import numpy as np
import torch

from ..config import Config, RayConfig, to_dict
from ..errors import WorldError


class RayUnavailable(WorldError):
    """Ray cannot be reached, or cannot place the requested actors; the message says what to do."""


class ActorsLost(WorldError):
    """A chunk lost its actor more often than allowed in one generation; the run stops."""


def init_ray(cfg: RayConfig, *, include_dashboard: bool = False) -> None:
    """Start a local Ray (``address=''``) with explicit resources, or join ``auto`` / ``host:port``.

    Raises :class:`RayUnavailable` within seconds when the address cannot be reached.
    """
    import ray

    if ray.is_initialized():
        return
    common = dict(include_dashboard=include_dashboard, logging_level="WARNING", log_to_driver=True,
                  configure_logging=True)
    address = (cfg.address or "").strip()
    if address in ("", "local"):
        num_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        # address="local": always a new local Ray, never a cluster that happens to run on this machine
        actors = cfg.num_actors if isinstance(cfg.num_actors, int) else 0
        ray.init(address="local", num_cpus=max(os.cpu_count() or 1, int(np.ceil(actors * cfg.num_cpus_per_actor))),
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


WAIT_LINE_SECONDS = 10.0   # while actors start: one "waiting for Ray actors" line this often
START_DELAY_ENV = "EVOPLAST_TEST_ACTOR_START_DELAY"   # tests only: seconds each actor sleeps as it starts
GPU_CHUNK_LIFETIMES = 1024   # a GPU's throughput saturates from about this many lifetimes per call (docs/cluster.md)
CPU_CHUNK_LIFETIMES = 16     # a CPU actor: enough that a chunk's compute outweighs its round trip through Ray
TIMING_KEYS = ("wall", "sample_sum", "sample_max", "evaluate_sum", "evaluate_max", "transfer_sum", "transfer_max",
               "straggler_wait", "chunks", "actors_used", "bytes")


class EvaluatorActor:
    """Ray actor body: one evaluator on the actor's device, built from the config dict.

    Asked for a GPU (``ray.num_gpus_per_actor > 0``) it evaluates on ``cuda``; when Ray assigned it a
    GPU but this process has no CUDA (a node that advertises GPUs it cannot use, or a CPU build of
    torch) it falls back to the CPU and says so in :meth:`info` (``fallback``).
    """

    def __init__(self, cfg_dict: dict, num_threads: int, start_delay: float = 0.0):
        import ray

        from ..config import from_dict
        from ..evaluation import Evaluator

        if start_delay > 0:         # a machine too busy to start actors quickly (tests)
            time.sleep(start_delay)
        torch.set_num_threads(max(1, num_threads))
        gpus = ray.get_gpu_ids()
        cuda = torch.cuda.is_available()
        self.fallback = ""
        if gpus and not cuda:
            self.fallback = (f"GPU {','.join(str(g) for g in gpus)} assigned by Ray but no CUDA in this process "
                             f"(torch {torch.__version__}): evaluating on the CPU")
        self.evaluator = Evaluator(from_dict(cfg_dict), "cuda" if gpus and cuda else "cpu")
        self._simulated: Optional[float] = None
        self._slowdown = 1.0
        self._real = False

    def info(self) -> dict:
        import ray

        return {"device": str(self.evaluator.device), "node_id": ray.get_runtime_context().get_node_id(),
                "pid": os.getpid(), "fallback": self.fallback}

    def fitness(self, genomes: torch.Tensor, generation: int) -> tuple[torch.Tensor, torch.Tensor, float, int, float]:
        """``(fitness, nonfinite, seconds evaluating, 0, 0.0)``: the genomes were sent."""
        t0 = time.perf_counter()
        fitness, nonfinite = self._fitness(genomes, generation)
        return fitness, nonfinite, time.perf_counter() - t0, 0, 0.0

    def fitness_of_recipe(self, recipe, start: int, stop: int,
                          generation: int) -> tuple[torch.Tensor, torch.Tensor, float, int, float]:
        """Rows ``start:stop`` of the population ``recipe`` describes, sampled here (only those rows with
        row sampling): ``(fitness, nonfinite, seconds evaluating, checksum of the first and last row,
        seconds sampling)``."""
        from .recipes import checksum

        t0 = time.perf_counter()
        genomes = recipe.sample(start, stop, device=self.evaluator.device)
        sampled = time.perf_counter() - t0
        t1 = time.perf_counter()
        fitness, nonfinite = self._fitness(genomes, generation)
        return fitness, nonfinite, time.perf_counter() - t1, checksum(genomes[[0, -1]]), sampled

    def _fitness(self, genomes: torch.Tensor, generation: int) -> tuple[torch.Tensor, torch.Tensor]:
        t0 = time.perf_counter()
        if self._simulated is None or self._real:
            out = self.evaluator.fitness(genomes, generation)
        else:
            out = (torch.full((len(genomes),), -1.0), torch.zeros(len(genomes), dtype=torch.bool))
        if self._simulated:
            time.sleep(self._simulated * len(genomes))
        if self._slowdown > 1:
            time.sleep((self._slowdown - 1) * (time.perf_counter() - t0))
        return out

    def simulate(self, seconds_per_genome: Optional[float] = None, slowdown: float = 1.0, real: bool = False) -> None:
        """Benchmarks and tests only. ``seconds_per_genome``: sleep that long per genome instead of evaluating
        (fitness -1), or with ``real`` after evaluating; ``slowdown``: then take that many times as long
        (a slower or busy node)."""
        self._simulated = seconds_per_genome
        self._slowdown = float(slowdown)
        self._real = bool(real)


class RayPool:
    """``num_actors`` evaluator actors; :meth:`evaluate` has the signature the problem expects.

    Args:
        cfg: the run's config with integer ``ray.*`` (``Placement.apply``): actors, CPUs and GPUs each.
        start_timeout: seconds an actor may wait to be *placed* (a node with room for it) before the
            pool gives up with a message naming the resources it could not find. Resources that no node
            has at all are refused at once, before any actor is created.
        start_bound: seconds a *placed* actor may take to start (imports, the evaluator, a kernel
            build): generous, since a busy machine makes the start slower, not wrong.
        replace_timeout: the placement wait for the replacement of a lost actor. Longer: when the lost
            actor's node is gone and no other node has room, an autoscaling cluster launches and sets up
            a new node first (minutes on AWS).
        max_retries: how many times one chunk may lose its actor in one generation (a replacement
            that dies before it starts counts too) before :meth:`evaluate` gives up.
        on_event: called with ``(kind, details)`` when an actor is lost (``actor_lost``) or replaced
            (``actor_replaced``, with the new actor's ``node_id``, ``device`` and ``pid``), or when a
            regenerated chunk differs from the driver's (``recipe_mismatch``); ``details`` always has
            ``generation``, ``actor`` (actor index), ``retry`` (losses of that chunk so far in this
            generation) and, for losses and mismatches, ``chunk``.
        progress: called with a line while actors start (every ``progress_every`` s).

    ``actor_info[i]`` is ``{"device", "node_id", "pid", "fallback"}`` of actor ``i``, kept current across
    replacements. ``last_bytes`` counts what the last :meth:`evaluate` sent to the actors.
    """

    def __init__(self, cfg: Config, *, start_timeout: float = 120.0, start_bound: float = 1800.0,
                 replace_timeout: float = 900.0, max_retries: int = 3,
                 on_event: Optional[Callable[[str, dict], None]] = None,
                 progress: Optional[Callable[[str], None]] = None, progress_every: Optional[float] = None):
        import ray

        self.cfg = cfg
        self.start_timeout = start_timeout
        self.start_bound = start_bound
        self.replace_timeout = replace_timeout
        self.max_retries = max_retries
        self.on_event = on_event or (lambda kind, details: None)
        self.progress = progress or (lambda line: None)
        self.progress_every = WAIT_LINE_SECONDS if progress_every is None else progress_every
        self._cfg_dict = to_dict(cfg)
        self._start_delay = float(os.environ.get(START_DELAY_ENV, "0") or 0)
        rc = cfg.ray
        self._check_feasible(rc)
        self._remote = ray.remote(EvaluatorActor).options(
            num_cpus=rc.num_cpus_per_actor, num_gpus=rc.num_gpus_per_actor, max_restarts=0,
            scheduling_strategy="SPREAD")
        self.actors = [self._new_actor() for _ in range(rc.num_actors)]
        self.actor_info = self._wait_ready(self.actors, self.start_timeout)
        self.last_timing: dict[str, float] = {}   # wall and slowest actor's compute of the last evaluate
        self.last_bytes: dict[str, int] = {}      # what the last evaluate sent: genomes or a recipe
        self.last_chunks: list[int] = []          # chunks each actor evaluated in the last evaluate
        self.use_recipes = True                   # off after a regenerated chunk differed (never seen)

    def _new_actor(self):
        return self._remote.remote(self._cfg_dict, max(1, int(self.cfg.ray.num_cpus_per_actor)), self._start_delay)

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
        """Wait until every actor answers. An actor not yet *placed* on a node after ``timeout`` s ends
        the wait with "cannot be placed"; a placed one that is still starting is waited for up to
        ``start_bound`` s, with a progress line that says so."""
        import ray

        refs = [a.info.remote() for a in actors]
        index = {ref: i for i, ref in enumerate(refs)}
        t0 = time.perf_counter()
        pending = list(refs)
        next_line = t0 + self.progress_every
        while pending:
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=min(1.0, self.progress_every))
            if not pending:
                break
            now = time.perf_counter()
            placed = [_placed(actors[index[r]]) for r in pending]
            waiting = sum(1 for p in placed if p is False)       # no node has given it room yet
            starting = len(pending) - waiting
            if waiting and now - t0 > timeout:
                self._give_back(actors)
                rc, free = self.cfg.ray, ray.available_resources()
                raise RayUnavailable(
                    f"{waiting} of {len(refs)} Ray actors could not be placed within {timeout:g} s: no node has "
                    f"room for an actor of {rc.num_cpus_per_actor:g} CPU / {rc.num_gpus_per_actor:g} GPU "
                    f"({free.get('CPU', 0):g} CPUs and {free.get('GPU', 0):g} GPUs free); lower ray.num_actors or "
                    f"the per-actor resources")
            if now - t0 > self.start_bound:
                self._give_back(actors)
                raise RayUnavailable(
                    f"{starting} of {len(refs)} Ray actors were placed but still had not started after "
                    f"{self.start_bound:g} s (imports, evaluator, kernel build); the nodes are overloaded or "
                    f"their Python environment is broken: see the Ray logs")
            if now >= next_line:
                next_line = now + self.progress_every
                self.progress(f"evoplast: waiting for Ray actors ({now - t0:.0f} s): {len(refs) - len(pending)} of "
                              f"{len(refs)} ready, {starting} placed and still starting (imports, evaluator)"
                              + (f", {waiting} waiting for a node with room" if waiting else ""))
        return ray.get(refs)

    @staticmethod
    def _give_back(actors) -> None:
        import ray

        for a in actors:   # give their resources back
            try:
                ray.kill(a)
            except Exception:  # noqa: BLE001 - already gone
                pass

    def chunk_count(self, popsize: int) -> int:
        """How many chunks a population of ``popsize`` is split into: ``ray.chunks_per_actor`` per actor;
        ``auto``: as many (1 to 8) as keep at least ``GPU_CHUNK_LIFETIMES`` (GPU actors) or
        ``CPU_CHUNK_LIFETIMES`` (CPU actors) lifetimes in each chunk."""
        n = len(self.actors)
        per = self.cfg.ray.chunks_per_actor
        if per == "auto":
            least = GPU_CHUNK_LIFETIMES if self.cfg.ray.num_gpus_per_actor > 0 else CPU_CHUNK_LIFETIMES
            lifetimes = popsize * self.cfg.evaluation.episodes / max(1, n)
            per = int(max(1, min(8, lifetimes // least)))
        return int(max(1, min(popsize, n * per)))

    def evaluate(self, genomes: torch.Tensor, generation: int,
                 recipe=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Fitness ``[P]`` and non-finite flags ``[P]`` of ``genomes [P, D]``.

        The population is split into :meth:`chunk_count` contiguous chunks, handed out one at a time to
        whichever actor is free, so a slow or busy node evaluates fewer of them (the fitness does not
        depend on the split). With ``recipe`` (:class:`~evoplast.parallel.recipes.PopulationRecipe` of
        ``genomes``) the actors get the recipe once, through the object store, and sample the rows of
        their chunks: O(D) moved per generation instead of O(P·D). The checksum of each chunk's first and
        last row is compared with the driver's; a chunk that differs is evaluated again from the genomes
        (and recipes are turned off). ``last_timing`` then holds the generation's :data:`TIMING_KEYS`.
        """
        import ray

        from .recipes import checksum

        t0 = time.perf_counter()
        n_chunks = self.chunk_count(genomes.shape[0])
        bounds = np.linspace(0, genomes.shape[0], n_chunks + 1).round().astype(int)
        # copies, not views: a view is serialized with its whole storage, i.e. every actor would receive
        # the whole population (measured: 2 actors, P=512, D=91,505 -> 375 MB instead of 187 MB)
        chunks = [genomes[bounds[i]:bounds[i + 1]] for i in range(n_chunks)]
        results: list = [None] * n_chunks
        retries = [0] * n_chunks
        use_recipe = recipe is not None and self.use_recipes and recipe.popsize == genomes.shape[0]
        recipe_ref = ray.put(recipe) if use_recipe else None
        self.last_bytes = {"recipe": recipe.nbytes if use_recipe else 0, "genomes": 0}
        todo = [i for i in range(n_chunks) if len(chunks[i])]
        for i in range(n_chunks):
            if not len(chunks[i]):
                results[i] = (torch.zeros(0), torch.zeros(0, dtype=torch.bool))
        by_recipe = {i: use_recipe for i in todo}
        free = list(range(len(self.actors)))
        pending: dict = {}                      # ref -> (chunk, actor, submitted at)
        per_actor = {a: {"sample": 0.0, "evaluate": 0.0, "transfer": 0.0, "end": 0.0, "chunks": 0}
                     for a in range(len(self.actors))}

        def submit(a: int, i: int) -> None:
            if by_recipe[i]:
                ref = self.actors[a].fitness_of_recipe.remote(recipe_ref, int(bounds[i]), int(bounds[i + 1]), generation)
            else:
                chunk = chunks[i].clone()
                self.last_bytes["genomes"] += chunk.numel() * chunk.element_size()
                ref = self.actors[a].fitness.remote(chunk, generation)
            pending[ref] = (i, a, time.perf_counter())

        # the driver's checksum of each chunk's first and last row (both parities of a pair; a wrong
        # generator, torch or recipe changes every row), taken while the actors work: O(D) per chunk
        expected: dict[int, int] = {}

        while todo or pending:
            while todo and free:
                submit(free.pop(0), todo.pop(0))
            if use_recipe and not expected:
                expected = {i: checksum(chunks[i][[0, -1]]) for i in by_recipe}
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                i, a, submitted = pending.pop(ref)
                try:
                    fitness, nonfinite, evaluating, check, sampling = ray.get(ref)
                except _lost_errors() as exc:
                    retries[i] = self._replace(a, generation, retries[i], exc, chunk=i)
                    todo.insert(0, i)
                    free.append(a)
                    continue
                now = time.perf_counter()
                row = per_actor[a]
                row["sample"] += sampling
                row["evaluate"] += evaluating
                row["transfer"] += max(0.0, now - submitted - sampling - evaluating)
                row["end"] = now - t0
                row["chunks"] += 1
                free.append(a)
                if by_recipe[i] and check != expected[i]:
                    self.use_recipes = False
                    self.on_event("recipe_mismatch", {"generation": generation, "actor": a, "chunk": i,
                                                      "retry": retries[i]})
                    by_recipe[i] = False
                    todo.insert(0, i)
                    continue
                results[i] = (fitness, nonfinite)
        wall = time.perf_counter() - t0
        used = [r for r in per_actor.values() if r["chunks"]]
        self.last_chunks = [per_actor[a]["chunks"] for a in range(len(self.actors))]
        self.last_timing = {
            "wall": wall,
            "compute_max": max((r["sample"] + r["evaluate"] for r in used), default=0.0),
            **{f"{k}_sum": sum(r[k] for r in used) for k in ("sample", "evaluate", "transfer")},
            **{f"{k}_max": max((r[k] for r in used), default=0.0) for k in ("sample", "evaluate", "transfer")},
            # how long the first actor to run out of work waited for the last one (stragglers)
            "straggler_wait": wall - min((r["end"] for r in used), default=wall),
            "chunks": float(n_chunks), "actors_used": float(len(used)),
            "bytes": float(self.last_bytes["recipe"] + self.last_bytes["genomes"]),
        }
        return torch.cat([r[0] for r in results]), torch.cat([r[1] for r in results])

    def _replace(self, i: int, generation: int, retries: int, error: BaseException, chunk: Optional[int] = None) -> int:
        """Replace lost actor ``i`` by a new one that is ready; returns the retry count of the chunk it was
        evaluating (``chunk``; events name the actor as ``actor`` and the chunk as ``chunk``).

        A replacement can itself die before it starts: after a node dies without saying so, Ray keeps the
        node alive for its health check's grace period (seconds) and may place the replacement there.
        That counts as another loss of the slice, and the next replacement goes elsewhere.
        """
        import ray

        node_id = self.actor_info[i].get("node_id", "")     # where the lost actor ran ('' if never started)
        while True:
            retries += 1
            self.on_event("actor_lost", {"generation": generation, "actor": i, "retry": retries,
                                         "error": type(error).__name__, "node_id": node_id}
                          | ({"chunk": chunk} if chunk is not None else {}))
            if retries > self.max_retries:
                raise ActorsLost(f"chunk {i if chunk is None else chunk} of generation {generation} lost its actor "
                                 f"{retries} times "
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
        """Kill the actors (their resources go back to the cluster)."""
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


def _placed(actor) -> Optional[bool]:
    """Whether Ray has placed ``actor`` on a node (its worker process is leased there, starting or
    alive): from the GCS's actor table. None when the table cannot be read (then: assume starting)."""
    try:
        from ray._private.state import actors as actor_table

        entry = actor_table(actor_id=actor._actor_id.hex())
    except Exception:  # noqa: BLE001 - a private API of Ray; without it, do not claim "cannot be placed"
        return None
    if not entry:
        return False
    # a worker process is leased to it (its pid is known) once a node has given it room; before that the
    # entry names at most the node whose queue it waits in
    return entry.get("State") == "ALIVE" or bool(entry.get("Pid"))


def speed_metrics(timing: dict, generation_seconds: float, driver_sample_seconds: float = float("nan")) -> dict[str, float]:
    """One generation's ``speed/`` MLflow metrics from :attr:`RayPool.last_timing` (empty: in-process).

    ``*_s`` are summed over actors (compute bought), ``*_max_s`` the largest actor's total (the
    critical path); ``transfer`` is each chunk's round trip less the actor's own time (Ray's scheduling,
    serialization, the network); ``straggler_wait_s`` how long the first actor out of work waited for
    the last; ``driver_s`` the generation less its evaluation (the driver's own sampling, ranking and
    update), ``sample_driver_s`` the driver's sampling alone.
    """
    row = {"speed/sample_driver_s": driver_sample_seconds}
    if timing:
        row |= {f"speed/{k}_s": timing[f"{k}_sum"] for k in ("sample", "evaluate", "transfer")}
        row |= {f"speed/{k}_max_s": timing[f"{k}_max"] for k in ("sample", "evaluate", "transfer")}
        row |= {"speed/straggler_wait_s": timing["straggler_wait"], "speed/evaluate_wall_s": timing["wall"],
                "speed/driver_s": max(0.0, generation_seconds - timing["wall"]), "speed/bytes_sent": timing["bytes"],
                "speed/chunks": timing["chunks"]}
    return {k: float(v) for k, v in row.items() if v == v}


def speed_note(timing: dict, generation_seconds: float, share: float = 0.05) -> str:
    """The progress line's account of a Ray generation: the critical path's evaluation, and each other
    term (driver, sampling, moving data, waiting for a straggler) when it is at least ``share`` of it."""
    if not timing or generation_seconds <= 0:
        return ""
    terms = {"driver": max(0.0, generation_seconds - timing["wall"]), "sample": timing["sample_max"],
             "move": timing["transfer_max"], "wait": timing["straggler_wait"]}
    shown = [f"{k} {v:.2f}" for k, v in terms.items() if v >= share * generation_seconds]
    return " ".join([f"eval {timing['evaluate_max']:.2f}", *shown]) + " s"
