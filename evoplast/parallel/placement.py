"""Where a generation is evaluated: in this process, on a private local Ray, or on the Ray cluster this
runs on; decided from the config and from what is there, in two pure steps.

1. :func:`choose` (before Ray starts): explicit settings win (``ray.address=''`` a private local Ray,
   ``ray.address=auto|host:port`` that cluster, ``ray.num_actors=N`` that many actors). With the
   defaults (``ray.address: null``, ``ray.num_actors: auto``) a cluster is joined when there is one
   (``$RAY_ADDRESS``, as under ``ray job submit``, or the address ``ray start`` wrote on this node);
   without one the work runs in-process, unless the machine has several cores and a generation is
   heavy, where a private local Ray pays for its start-up.
2. :func:`size` (after joining, from ``ray.nodes()``): ``num_actors: auto`` on a cluster places one
   actor per GPU (1 GPU each) when the cluster has GPUs, else one actor per few CPUs on each node.

The result, a :class:`Placement`, says what was chosen and why: the run prints it in its first line
and logs :meth:`Placement.params` to MLflow. Whatever is chosen, the same seed gives the same fitness
history (each genome's lifetime does not depend on which process evaluates it).
"""

from __future__ import annotations

import math
import os
import socket
from dataclasses import dataclass, replace
from typing import Literal, Mapping, Optional, Sequence

from ..config import Config

CPUS_PER_ACTOR = 4          # "a few CPUs" per CPU actor when the actor count is automatic
LOCAL_RAY_MIN_CPUS = 4      # a private local Ray only pays from this many cores ...
HEAVY_GFLOP = 20.0          # ... and from this much work per generation (Ray costs ~5-30 ms a generation)

Where = Literal["in-process", "local Ray", "cluster"]


@dataclass(frozen=True)
class Placement:
    """The decision. ``num_actors`` is None on a cluster until :func:`size` has seen its nodes."""

    where: Where
    address: str                   # for ray.init: '' (no Ray), 'local', or the cluster's address
    num_actors: Optional[int]
    num_cpus_per_actor: float
    num_gpus_per_actor: float
    reason: str                    # why, in a few words
    device: str = "cpu"            # in-process: the device; actors: what they are asked to use
    threads: int = 0               # in-process on a CPU: torch threads for the run (0 = leave as they are)

    def describe(self) -> str:
        """The first line's fragment, e.g. ``cluster 10.0.1.23:6379: 4 Ray actors x 1 GPU (one per GPU)``."""
        if self.where == "in-process":
            return f"in-process on {self.device}{', 1 thread' if self.threads == 1 else ''} ({self.reason})"
        each = (f"{self.num_gpus_per_actor:g} GPU + {self.num_cpus_per_actor:g} CPU" if self.num_gpus_per_actor
                else f"{self.num_cpus_per_actor:g} CPU")
        at = "local Ray" if self.where == "local Ray" else f"Ray cluster {self.address}"
        return f"{at}: {self.num_actors} Ray actors x {each} ({self.reason})"

    def params(self) -> dict[str, str]:
        """MLflow params ``placement.*``: where, address, actors, resources per actor, reason."""
        return {"placement.where": self.where, "placement.address": self.address or "-",
                "placement.num_actors": str(self.num_actors or 0),
                "placement.num_cpus_per_actor": f"{self.num_cpus_per_actor:g}",
                "placement.num_gpus_per_actor": f"{self.num_gpus_per_actor:g}",
                "placement.device": self.device, "placement.threads": str(self.threads or "default"),
                "placement.reason": self.reason}

    def apply(self, cfg: Config) -> Config:
        """``cfg`` with ``ray.*`` as decided (integers, the address to init): what the pool is built from."""
        return cfg.replace(**{"ray.num_actors": self.num_actors or 0, "ray.address": self.address,
                              "ray.num_cpus_per_actor": self.num_cpus_per_actor,
                              "ray.num_gpus_per_actor": self.num_gpus_per_actor})


def detect_cluster(environ: Mapping[str, str] = os.environ) -> tuple[str, str]:
    """``(address, how)`` of a Ray cluster to join, or ``('', '')``.

    ``$RAY_ADDRESS`` first (``ray job submit`` sets it); else the address ``ray start`` (and ``ray up``)
    wrote to ``<ray temp dir>/ray_current_cluster``, if its GCS answers. Private local Rays of other
    processes (``ray.init()`` without an address) are never joined.
    """
    env = environ.get("RAY_ADDRESS", "").strip()
    if env:
        return env, "$RAY_ADDRESS"
    temp = environ.get("RAY_TMPDIR") or environ.get("TMPDIR") or "/tmp"       # Ray's own rule (Linux)
    try:
        with open(os.path.join(temp, "ray", "ray_current_cluster")) as f:
            address = f.read().strip()
    except OSError:
        return "", ""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=2):
            return address, "`ray start` on this node"
    except (OSError, ValueError):
        return "", ""       # a stale file: that cluster has stopped


def generation_gflop(cfg: Config, sizes: Sequence[int]) -> float:
    """Rough GFLOP of one generation's lifetimes: forward, teaching signal and update of every layer.

    ``sizes``: the network's ``(n_in, *hidden, n_out)``. Enough to tell light from heavy work.
    """
    t = cfg.task
    steps = t.num_tasks * t.batches_per_task
    macs = sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
    return 2 * 3 * macs * t.batch_size * steps * cfg.evaluation.episodes * cfg.search.popsize / 1e9


def choose(cfg: Config, *, gflop: float, environ: Mapping[str, str] = os.environ,
           cpu_count: Optional[int] = None, cuda: bool = False) -> Placement:
    """Step 1, before Ray starts. ``gflop``: :func:`generation_gflop`; ``cuda``: this process sees a GPU."""
    rc = cfg.ray
    cpus = cpu_count if cpu_count is not None else (os.cpu_count() or 1)
    local_device = "cuda" if cfg.device == "cuda" or (cfg.device == "auto" and cuda) else "cpu"
    auto = rc.num_actors == "auto"
    if rc.num_actors == 0:
        return Placement("in-process", "", 0, 0.0, 0.0, "ray.num_actors=0", local_device)
    if rc.address is None:
        address, how = detect_cluster(environ)
        if address:
            return Placement("cluster", address, None if auto else int(rc.num_actors), rc.num_cpus_per_actor,
                             rc.num_gpus_per_actor, f"joined via {how}")
        if not auto:
            return Placement("local Ray", "local", int(rc.num_actors), rc.num_cpus_per_actor,
                             rc.num_gpus_per_actor, f"ray.num_actors={rc.num_actors}, no Ray cluster")
        if local_device == "cuda":
            return Placement("in-process", "", 0, 0.0, 0.0, "no Ray cluster; this process has a GPU", "cuda")
        if cpus < LOCAL_RAY_MIN_CPUS or gflop < HEAVY_GFLOP:
            why = (f"{cpus} cores" if cpus < LOCAL_RAY_MIN_CPUS else f"light work: ~{gflop:.2g} GFLOP per generation")
            # on a few cores shared with other work, a team of OpenMP threads waits for its slowest member
            # at every step: one thread was 5x faster than two under load (docs/cluster.md)
            return Placement("in-process", "", 0, 0.0, 0.0, f"no Ray cluster; {why}", local_device,
                             threads=1 if cpus < LOCAL_RAY_MIN_CPUS else 0)
        n, each = _cpu_actors([cpus])
        return Placement("local Ray", "local", n, each, 0.0,
                         f"no Ray cluster; {cpus} cores and ~{gflop:.3g} GFLOP per generation")
    if rc.address == "":            # asked for a private local Ray
        if auto:
            n, each = _cpu_actors([cpus])
            return Placement("local Ray", "local", n, each, 0.0, f"ray.address='': {cpus} cores")
        return Placement("local Ray", "local", int(rc.num_actors), rc.num_cpus_per_actor, rc.num_gpus_per_actor,
                         "ray.address=''")
    return Placement("cluster", rc.address, None if auto else int(rc.num_actors), rc.num_cpus_per_actor,
                     rc.num_gpus_per_actor, f"ray.address={rc.address!r}")


def size(placement: Placement, nodes: Sequence[Mapping], *, cpus_per_gpu_actor: float = 1.0) -> Placement:
    """Step 2, on a joined cluster: the actor count from its alive ``nodes`` (``ray.nodes()`` entries).

    One actor per whole GPU (1 GPU and ``cpus_per_gpu_actor`` CPUs each) when any node has a GPU; else,
    on each node, one actor per :data:`CPUS_PER_ACTOR` CPUs (fewer CPUs each on smaller nodes).
    Raises ValueError when no node can hold an actor.
    """
    if placement.num_actors is not None:
        return placement
    alive = [n.get("Resources", {}) for n in nodes if n.get("Alive", True)]
    gpus = [int(math.floor(r.get("GPU", 0.0) + 1e-9)) for r in alive]
    if sum(gpus) > 0:
        cpu_each = min([cpus_per_gpu_actor] + [r.get("CPU", 0.0) for r, g in zip(alive, gpus) if g])
        return replace(placement, num_actors=sum(gpus), num_gpus_per_actor=1.0, num_cpus_per_actor=cpu_each,
                       device="cuda", reason=f"{placement.reason}; one actor per GPU ({sum(gpus)} GPUs)")
    cpus = [int(math.floor(r.get("CPU", 0.0) + 1e-9)) for r in alive]
    if not any(cpus):
        raise ValueError("no node of the Ray cluster has a CPU or a GPU for an evaluator actor yet (are the "
                         "workers still joining? `ray status` lists them); wait, or set ray.num_actors")
    n, each = _cpu_actors(cpus)
    return replace(placement, num_actors=n, num_cpus_per_actor=each, num_gpus_per_actor=0.0,
                   reason=f"{placement.reason}; no GPUs: one actor per {each:g} CPUs on {sum(c > 0 for c in cpus)} nodes")


def _cpu_actors(cpus_per_node: Sequence[int]) -> tuple[int, float]:
    """``(actors, CPUs each)``: one actor per CPUS_PER_ACTOR CPUs of each node (at least one per node
    with CPUs; a node smaller than that gets one actor of all its CPUs, the smallest one sets the size)."""
    each = min([CPUS_PER_ACTOR] + [c for c in cpus_per_node if c > 0])
    return sum(c // each for c in cpus_per_node if c > 0), float(each)
