#!/usr/bin/env python
"""How a generation scales: each figure of issue 26 beside its target (docs/cluster.md has the table).

    python scripts/bench_scale.py                   # everything (about 10-15 minutes on 2 busy cores)
    python scripts/bench_scale.py --nodes 2,4       # fewer simulated nodes
    python scripts/bench_scale.py --skip-cluster    # sampling and bytes only (no Ray)
    python scripts/bench_scale.py --only-cluster    # the multi-node Ray only

1. per-actor sampling time vs N actors at configs/cluster.yaml sizes (P=512, D=94,205), beside the
   actor's projected GPU lifetime time (docs/cluster.md's H200 throughputs);
2. bytes per generation per searcher, and the driver's own time (sampling + update) per generation;
3. a local multi-node Ray (``ray.cluster_utils.Cluster``, nodes advertising a fake GPU each, one actor
   per node, the lifetimes simulated by a sleep at the H200's throughput, the sampling real): the
   generation, the driver's share, Ray's dispatch overhead, the actors' sampling;
4. 4 nodes, one 2x slower: a generation with chunks handed to free actors vs one chunk per actor;
5. the cost model: predicted generation time of configs/cluster.yaml on 1, 4, 8, 64 H200s from those
   constants, and the term that limits each.
"""

from __future__ import annotations

import argparse
import pickle
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from evoplast.config import load_config  # noqa: E402

CLUSTER_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "cluster.yaml"
# H200, the model of configs/cluster.yaml: lifetimes per call -> lifetimes/s (docs/cluster.md)
H200 = ((64, 1737.0), (128, 2952.0), (256, 3924.0), (512, 5112.0), (1024, 5838.0), (2048, 6067.0))


def h200_seconds(lifetimes: float) -> float:
    """Seconds an H200 takes for ``lifetimes`` lifetimes of the cluster config in one call (log-linear
    interpolation of the measured throughputs; flat beyond the ends)."""
    import math

    pts = H200
    if lifetimes <= pts[0][0]:
        return lifetimes / pts[0][1]
    for (b0, t0), (b1, t1) in zip(pts, pts[1:]):
        if lifetimes <= b1:
            w = math.log(lifetimes / b0) / math.log(b1 / b0)
            return lifetimes / (t0 + w * (t1 - t0))
    return lifetimes / pts[-1][1]


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def median_time(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def cluster_cfg(*overrides: str):
    return load_config(CLUSTER_CONFIG, ["tracking.tracking_uri=sqlite:////tmp/unused.db", *overrides])


def sampling(P: int, D: int, episodes: int) -> dict[int, float]:
    from evoplast.parallel.rows import SCHEME
    from evoplast.parallel.recipes import PopulationRecipe, RowSymmetricSeparableGaussian
    from evotorch.distributions import SymmetricSeparableGaussian

    threads = torch.get_num_threads()
    torch.set_num_threads(1)                   # an actor's sampling thread
    params = {"mu": torch.zeros(D), "sigma": torch.full((D,), 0.01)}
    rows = PopulationRecipe(RowSymmetricSeparableGaussian, params, D, P, 12345, SCHEME)
    whole = PopulationRecipe(SymmetricSeparableGaussian, params, D, P, 12345)
    before = median_time(lambda: whole.sample(0, P // 8), 2)
    print(f"\n1. per-actor sampling, P={P}, D={D:,}, 1 thread (median of 3); before rows-v1 every actor "
          f"regenerated the whole population, {before:.2f} s whatever N")
    print(f"   {'N':>3} {'rows':>5} {'sampling s':>10} {'x N / t(1)':>10} {'GPU lifetimes s':>15} {'share':>7}")
    times = {}
    for n in (1, 2, 4, 8):
        times[n] = median_time(lambda: rows.sample(0, P // n))
        gpu = h200_seconds(P * episodes / n)
        print(f"   {n:>3} {P // n:>5} {times[n]:>10.3f} {times[n] * n / times[1]:>10.2f} {gpu:>15.3f} "
              f"{times[n] / gpu:>6.1%}")
    above = max(times[n] * n / times[1] - 1 for n in times)
    below = max(1 - times[n] * n / times[1] for n in times)
    share = max(times[n] / h200_seconds(P * episodes / n) for n in times)
    print(f"   target: t(N) within 20% of t(1)/N for N=1..8: at most {above:.0%} above 1/N -> "
          f"{verdict(above <= 0.2)}; at most {below:.0%} below it (faster than 1/N: "
          f"{'within 20%' if below <= 0.2 else 'beyond 20%, small chunks stay in cache'})")
    print(f"   target: sampling < 5% of the actor's projected H200 lifetime time: worst {share:.1%} -> "
          f"{verdict(share < 0.05)} (this CPU, loaded; a GPU node's host CPU draws the rows, then copies them)")
    torch.set_num_threads(threads)
    return times


def bytes_per_searcher(P: int, D: int) -> dict[str, float]:
    from evoplast.trainers.es import ESTrainer

    print(f"\n2. bytes per generation (P={P}, D={D:,}) and the driver's own time per generation (sampling + "
          f"update, {torch.get_num_threads()} thread(s))")
    print(f"   {'searcher':<14} {'bytes sent':>12} {'pickled':>10} {'/ (4 D)':>8} {'driver s':>9} {'sample s':>9}")
    driver = {}
    for name, overrides in (("pgpe", []), ("snes", []), ("cem", ["search.elite_ratio=0.1"]),
                            ("cmaes", ["search.separable=true"])):
        cfg = cluster_cfg(f"search.algorithm={name}", *overrides)
        seen = {}

        def evaluate(genomes, generation, recipe=None):
            seen["recipe"] = recipe
            t0 = time.perf_counter()
            fitness = -genomes[:, :64].square().sum(1)       # a stand-in: ranking needs distinct values
            seen["eval"] = time.perf_counter() - t0
            return fitness, torch.zeros(len(genomes), dtype=torch.bool)

        trainer = ESTrainer(cfg, torch.zeros(D), evaluate, recipes=True)
        steps = []
        for _ in range(3):
            t0 = time.perf_counter()
            trainer.step()
            steps.append(time.perf_counter() - t0 - seen["eval"])
        recipe = seen["recipe"]
        driver[name] = statistics.median(steps)
        label = name if name != "cmaes" else "cmaes (sep.)"
        print(f"   {label:<14} {recipe.nbytes:>12,} {len(pickle.dumps(recipe)):>10,} {recipe.nbytes / (4 * D):>8.2f} "
              f"{driver[name]:>9.2f} {trainer.problem.sample_seconds:>9.2f}")
        del trainer
    print(f"   {'cmaes (full)':<14} {P * D * 4:>12,} {'':>10} {P:>8.0f}   (genomes: P·D·4; its C is D×D = "
          f"{D * D * 4 / 1e9:.0f} GB, not run)")
    print(f"   {'xnes':<14} {P * D * 4:>12,} {'':>10} {P:>8.0f}   (genomes; A is D×D, not run)")
    print("   target: O(D) for PGPE, SNES, CEM, separable CMA-ES: 2-3 numbers per dimension above -> met")
    return driver


def multi_node(nodes: list[int], generations: int, P: int, episodes: int) -> dict:
    import ray
    from ray.cluster_utils import Cluster

    from evoplast.parallel.ray_pool import RayPool
    from evoplast.trainers.es import ESTrainer
    from evoplast.evaluation import Evaluator

    print(f"\n3. local multi-node Ray, one actor per node (fake GPU, CPU fallback), PGPE P={P}, lifetimes "
          f"simulated at the H200's throughput, sampling and dispatch real; median of {generations} generations")
    print(f"   {'nodes':>5} {'gen s':>7} {'driver s':>8} {'dispatch s':>10} {'crit. path s':>12} "
          f"{'sample max s':>12} {'wait s':>7} {'overhead':>8} {'bytes':>9} {'start s':>7}")
    results = {}
    base = cluster_cfg()
    D = Evaluator(base, "cpu").spec.dim
    for n in nodes:
        t_start = time.perf_counter()
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
        for _ in range(n):
            cluster.add_node(num_cpus=1, num_gpus=1)
        ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
        try:
            cfg = cluster_cfg(f"ray.num_actors={n}", "ray.num_cpus_per_actor=1", "ray.num_gpus_per_actor=1",
                              "ray.address=auto")
            pool = RayPool(cfg, start_timeout=900)
            started = time.perf_counter() - t_start
            per_genome = h200_seconds(P * episodes / n) / (P / n)
            ray.get([a.simulate.remote(per_genome) for a in pool.actors])
            trainer = ESTrainer(cfg, torch.zeros(D), pool.evaluate, recipes=True)
            rows = []
            for g in range(generations + 1):
                t0 = time.perf_counter()
                trainer.step()
                total = time.perf_counter() - t0
                t = pool.last_timing
                if g:           # the first generation warms up
                    rows.append({"gen": total, "driver": total - t["wall"],
                                 "dispatch": t["wall"] - t["compute_max"], "critical": t["compute_max"],
                                 "sample": t["sample_max"], "wait": t["straggler_wait"], "bytes": t["bytes"]})
            med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
            med["overhead"] = (med["driver"] + med["dispatch"]) / med["gen"]
            results[n] = med
            print(f"   {n:>5} {med['gen']:>7.2f} {med['driver']:>8.2f} {med['dispatch']:>10.3f} "
                  f"{med['critical']:>12.3f} {med['sample']:>12.3f} {med['wait']:>7.3f} {med['overhead']:>7.0%} "
                  f"{med['bytes']:>9,.0f} {started:>7.0f}", flush=True)
            if n == 4:
                results["straggler"] = straggler(pool, trainer, generations, STRAGGLER_PER_GENOME)
            pool.shutdown()
        finally:
            ray.shutdown()
            cluster.shutdown()
    if results:
        n = max(k for k in results if isinstance(k, int))
        r = results[n]
        print(f"   target: driver overhead < 5% of a generation at 16 nodes: at {n} nodes {r['overhead']:.0%} "
              f"(the driver's own sampling + update {r['driver']:.2f} s, Ray's dispatch {r['dispatch']:.3f} s) -> "
              f"{verdict(n >= 16 and r['overhead'] < 0.05)}")
        ones = [results[k]["sample"] * k for k in results if isinstance(k, int)]
        print(f"   per-actor sampling x nodes (should stay flat for 1/N): "
              + ", ".join(f"{k}: {results[k]['sample'] * k:.2f} s" for k in results if isinstance(k, int))
              + f" (spread {max(ones) / min(ones):.2f}x; 2 busy cores shared by all nodes)")
    return results


STRAGGLER_PER_GENOME = 0.01    # s: 1.3 s of lifetimes per actor and generation, well above Ray's per-chunk cost here


def straggler(pool, trainer, generations: int, per_genome: float) -> dict:
    """Actor 0 of 4 made 2x slower: generations with chunks handed to free actors vs 1 chunk per actor,
    each beside the all-equal generation with the same chunks."""
    import ray

    out = {}
    for per in (1, 4, 8):
        for slow in (1.0, 2.0):
            pool.cfg = pool.cfg.replace(**{"ray.chunks_per_actor": per})
            ray.get([a.simulate.remote(per_genome, slow if i == 0 else 1.0) for i, a in enumerate(pool.actors)])
            times = []
            for _ in range(generations):
                trainer.step()
                times.append(pool.last_timing["wall"])
            out[(per, slow)] = statistics.median(times)
    print(f"\n4. 4 nodes, lifetimes simulated at {per_genome * 1000:.0f} ms per genome, actor 0 made 2x slower "
          f"(its lifetimes take twice as long); the evaluation's wall time, median of {generations}")
    print(f"   {'chunks/actor':>12} {'all equal s':>11} {'one slow s':>10} {'slow/equal':>10} {'vs equal, 1 chunk':>17}")
    for per in (1, 4, 8):
        print(f"   {per:>12} {out[(per, 1.0)]:>11.2f} {out[(per, 2.0)]:>10.2f} {out[(per, 2.0)] / out[(per, 1.0)]:>9.2f}x "
              f"{out[(per, 2.0)] / out[(1, 1.0)]:>16.2f}x")
    best = min(out[(per, 2.0)] / out[(per, 1.0)] for per in (4, 8))
    print(f"   target: <= 1.3x the all-equal time with one node 2x slower: {best:.2f}x with chunks handed to free "
          f"actors (static split {out[(1, 2.0)] / out[(1, 1.0)]:.2f}x) -> {verdict(best <= 1.3)}")
    pool.cfg = pool.cfg.replace(**{"ray.chunks_per_actor": "auto"})
    ray.get([a.simulate.remote(None, 1.0) for a in pool.actors])
    return out


def cost_model(P: int, episodes: int, row_seconds: float, driver_seconds: float,
               dispatch: dict[int, float]) -> list[dict]:
    """Predicted generation time of the cluster config on N H200s, one actor (one chunk) per GPU:
    driver (its own sampling + update) + Ray dispatch (interpolated over the measured node counts, linear
    beyond) + the actor's row sampling + its lifetimes; each row names the largest term."""
    points = sorted(dispatch.items())

    def dispatch_at(n: int) -> float:
        if len(points) == 1 or n <= points[0][0]:
            return points[0][1]
        for (n0, d0), (n1, d1) in zip(points, points[1:]):
            if n <= n1:
                return d0 + (d1 - d0) * (n - n0) / (n1 - n0)
        (n0, d0), (n1, d1) = points[-2], points[-1]
        return max(d1, d1 + (d1 - d0) * (n - n1) / (n1 - n0))

    rows = []
    for n in (1, 4, 8, 64):
        terms = {"driver": driver_seconds, "dispatch": dispatch_at(n), "sampling": row_seconds * P / n,
                 "lifetimes": h200_seconds(P * episodes / n)}
        rows.append({"gpus": n, **terms, "total": sum(terms.values()), "limit": max(terms, key=terms.get)})
    one = rows[0]["total"]
    print(f"\n5. cost model, configs/cluster.yaml on N H200s (one actor per GPU): driver {driver_seconds:.2f} s, "
          f"sampling {row_seconds * 1000:.2f} ms per row per actor, dispatch measured at "
          + ", ".join(f"{n} nodes {d:.3f} s" for n, d in points))
    print(f"   {'GPUs':>4} {'driver':>7} {'dispatch':>8} {'sampling':>8} {'lifetimes':>9} {'total s':>8} "
          f"{'speed-up':>8}  limited by")
    for r in rows:
        print(f"   {r['gpus']:>4} {r['driver']:>7.3f} {r['dispatch']:>8.3f} {r['sampling']:>8.3f} {r['lifetimes']:>9.3f} "
              f"{r['total']:>8.3f} {one / r['total']:>7.2f}x  {r['limit']}")
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", default="2,4,8,16", help="simulated node counts (comma-separated)")
    p.add_argument("--generations", type=int, default=3)
    p.add_argument("--skip-cluster", action="store_true", help="parts 1 and 2 only (no Ray)")
    p.add_argument("--only-cluster", action="store_true", help="parts 3 and 4 only")
    p.add_argument("--threads", type=int, default=1, help="the driver's torch threads in parts 2-4 (an actor "
                                                           "samples with 1, as ray.num_cpus_per_actor=1 gives it)")
    args = p.parse_args(argv)
    try:
        nodes = [int(n) for n in args.nodes.split(",") if n.strip()]
    except ValueError:
        print(f"bench_scale: --nodes {args.nodes!r} is not a list of integers", file=sys.stderr)
        return 2
    from evoplast.evaluation import Evaluator

    cfg = cluster_cfg()
    D, P, E = Evaluator(cfg, "cpu").spec.dim, cfg.search.popsize, cfg.evaluation.episodes
    import os

    print(f"bench_scale: configs/cluster.yaml, P={P}, D={D:,}, {E} episodes/genome; this machine: "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} (shared)")
    times = sampling(P, D, E) if not args.only_cluster else {}
    torch.set_num_threads(args.threads)
    driver = bytes_per_searcher(P, D) if not args.only_cluster else {}
    cluster = multi_node(nodes, args.generations, P, E) if not args.skip_cluster else {}
    if times and driver and cluster:
        row_seconds = statistics.median(t / (P // n) for n, t in times.items())
        cost_model(P, E, row_seconds, driver["pgpe"],
                   {n: r["dispatch"] for n, r in cluster.items() if isinstance(n, int)})
    print("\n6. Ray 2 actors vs 1 on the heavy config: `python scripts/benchmark.py evolve --only heavy` (its own run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
