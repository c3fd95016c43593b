#!/usr/bin/env python
"""Generations/s with 0, 1, 2 Ray actors, light and heavy: ``python scripts/bench_evolve.py``.

Timings on a shared 2-core machine vary by up to +-30% from run to run: every number is a median of
repetitions, and the ratios are taken side by side in one process.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from evoplast.bench.workloads import DEFAULT_CONFIG, PAPER_WIDTH  # noqa: E402
from evoplast.cli import run_main  # noqa: E402
from evoplast.config import load_config  # noqa: E402


def bench_evolve(args) -> None:
    import os

    os.environ.setdefault("RAY_AUTH_MODE", "disabled") if args.no_auth else None
    import ray

    from evoplast.evaluation import Evaluator
    from evoplast.parallel.ray_pool import RayPool, init_ray
    from evoplast.trainers.es import ESTrainer

    print(f"evolve benchmark: generations/s and evaluations/s (genomes/s) with 0, 1, 2 Ray actors; "
          f"{os.cpu_count()} CPUs. 0 actors = in-process with {args.threads} threads; each actor uses 1 thread.")
    print("The three settings run side by side: one generation of each in turn (the idle actors wait without "
          "using a core);")
    print("gen/s is the median over the generations. Ray overhead = a generation's evaluation wall time minus "
          "the slowest actor's compute.")
    results: dict[tuple[str, int], tuple[float, float]] = {}
    header = f"{'config':<34} {'actors':>6} {'gen/s':>7} {'evals/s':>8} {'vs 0 actors':>11} {'Ray overhead':>13}"
    print(header)
    print("-" * len(header))
    configs = (("light: configs/default.yaml", ["search.popsize=32", "evaluation.episodes=4"]),
               ("heavy: 11-300-300-1, 400 steps", PAPER_WIDTH + ["search.popsize=8", "evaluation.episodes=2"]))
    torch.set_num_threads(args.threads)
    for name, overrides in configs:
        if args.only and not name.startswith(args.only):
            continue
        cfgs = {a: load_config(DEFAULT_CONFIG, overrides + [f"ray.num_actors={a}", "search.algorithm=cmaes"])
                for a in (0, 1, 2)}
        init_ray(cfgs[2].ray.replace(num_actors=3))           # room for the 1- and the 2-actor pool at once
        pools = {a: RayPool(cfgs[a]) for a in (1, 2)}
        trainers = {}
        for a, cfg in cfgs.items():
            evaluate = pools[a].evaluate if a else Evaluator(cfg).fitness
            trainers[a] = ESTrainer(cfg, Evaluator(cfg).spec.initial_vector(), evaluate)
            trainers[a].step()  # warm-up
        seconds = {a: [] for a in cfgs}
        overheads = {a: [] for a in pools}
        walls = {a: [] for a in pools}               # the evaluation alone: the pool's wall time
        for _ in range(args.generations):
            for a, trainer in trainers.items():
                t0 = time.perf_counter()
                trainer.step()
                seconds[a].append(time.perf_counter() - t0)
                if a:
                    timing = pools[a].last_timing
                    walls[a].append(timing["wall"])
                    overheads[a].append((timing["wall"] - timing["compute_max"]) / seconds[a][-1])
        for a in cfgs:
            per_gen = statistics.median(seconds[a])
            overhead = statistics.median(overheads[a]) if a else 0.0
            results[(name.split(":")[0], a)] = (per_gen, overhead)
            print(f"{name:<34} {a:>6} {1 / per_gen:>7.2f} {cfgs[a].search.popsize / per_gen:>8.1f} "
                  f"{statistics.median(seconds[0]) / per_gen:>10.2f}x {f'{overhead * 100:12.1f}%' if a else '':>13}",
                  flush=True)
        driver_ms = 1000 * statistics.median(t - w for a in pools for t, w in zip(seconds[a], walls[a]))
        spread = max(max(v) / min(v) for v in seconds.values())
        print(f"{'':<34} evaluation alone, 2 vs 1 actor {statistics.median(walls[1]) / statistics.median(walls[2]):.2f}x;"
              f" searcher + driver {driver_ms:.0f} ms per generation; slowest / fastest generation {spread:.2f}x")
        for pool in pools.values():
            pool.shutdown()
        ray.shutdown()
    if ("heavy", 2) not in results:
        return
    scaling = results[("heavy", 1)][0] / results[("heavy", 2)][0]
    overhead = max(results[("heavy", 1)][1], results[("heavy", 2)][1])
    print()
    print("targets (heavy configuration):")
    print(f"  2 actors vs 1 actor, evaluations/s   {scaling:5.2f}x (target >= 1.7): {'pass' if scaling >= 1.7 else 'short'}")
    print(f"  Ray overhead per generation         {overhead * 100:5.1f}% (target < 5%): {'pass' if overhead < 0.05 else 'short'}")


def main(argv: list[str] | None = None) -> int:
    from evoplast.cli import parser

    p = parser(__doc__.splitlines()[0], "bench_evolve.py", config=False, tracking=False)   # one-line errors
    p.add_argument("--threads", type=int, default=min(2, torch.get_num_threads()))
    p.add_argument("--generations", type=int, default=10)
    p.add_argument("--only", choices=["light", "heavy"], help="run one of the two configurations")
    p.add_argument("--no-auth", action="store_true", help="RAY_AUTH_MODE=disabled for the throwaway local Ray")
    args = p.parse_args(argv)
    bench_evolve(args)
    return 0


if __name__ == "__main__":
    run_main(main)
