#!/usr/bin/env python
"""Page faults and time per generation, evaluation.reuse_memory off / on: ``python scripts/bench_allocator.py``.

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

from evoplast.bench.workloads import DEFAULT_CONFIG  # noqa: E402
from evoplast.cli import run_main  # noqa: E402
from evoplast.config import load_config  # noqa: E402


def _allocator_once(reuse: bool, threads: int) -> dict:
    """In this (fresh) process: minor page faults and milliseconds per generation of the default config
    (32 genomes x 4 episodes, in-process), median of 5 generations after 2 of warm-up."""
    import resource

    from evoplast.evaluation import Evaluator

    torch.set_num_threads(threads)
    cfg = load_config(DEFAULT_CONFIG, [f"evaluation.reuse_memory={str(reuse).lower()}", "ray.num_actors=0"])
    ev = Evaluator(cfg)
    genomes = ev.spec.initial_vector() + 0.01 * torch.randn(cfg.search.popsize, ev.spec.dim)
    for g in range(2):                                   # warm-up: the heap grows to its working size
        ev.fitness(genomes, g)
    faults, seconds = [], []
    for g in range(5):
        f0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
        ev.fitness(genomes, g)
        seconds.append(time.perf_counter() - t0)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    return {"faults": statistics.median(faults), "ms": 1000 * statistics.median(seconds)}


def bench_allocator(args) -> None:
    import json
    import subprocess

    print(f"allocator benchmark: page faults and ms per generation of configs/default.yaml in-process "
          f"({args.threads} thread(s)), evaluation.reuse_memory off vs on; fresh processes, alternating, "
          f"{args.rounds} rounds, medians")
    rows = {False: [], True: []}
    for _ in range(args.rounds):
        for reuse in (False, True):
            proc = subprocess.run([sys.executable, __file__, "--reuse", str(reuse).lower(),
                                   "--threads", str(args.threads)], capture_output=True, text=True, timeout=600)
            if proc.returncode != 0:
                raise RuntimeError(proc.stderr[-2000:])
            rows[reuse].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    for reuse in (False, True):
        faults = statistics.median(r["faults"] for r in rows[reuse])
        ms = statistics.median(r["ms"] for r in rows[reuse])
        print(f"  reuse_memory={str(reuse).lower():<5}  page faults / generation {faults:8.0f}   ms / generation {ms:6.1f}")


def main(argv: list[str] | None = None) -> int:
    import argparse

    from evoplast.cli import parser

    p = parser(__doc__.splitlines()[0], "bench_allocator.py", config=False, tracking=False)   # one-line errors
    p.add_argument("--threads", type=int, default=min(2, torch.get_num_threads()))
    p.add_argument("--rounds", type=int, default=3, help="processes per setting")
    p.add_argument("--reuse", choices=["true", "false"], help=argparse.SUPPRESS)   # one measuring process
    args = p.parse_args(argv)
    if args.reuse:
        import json

        print(json.dumps(_allocator_once(args.reuse == "true", args.threads)))
        return 0
    bench_allocator(args)
    return 0


if __name__ == "__main__":
    run_main(main)
