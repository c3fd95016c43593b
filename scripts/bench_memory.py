#!/usr/bin/env python
"""Peak memory and time, an ES generation against a BPTT meta-step: ``python scripts/bench_memory.py``.

Timings on a shared 2-core machine vary by up to +-30% from run to run: every number is a median of
repetitions, and the ratios are taken side by side in one process.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from evoplast.bench.workloads import OJA_EVERY_LAYER  # noqa: E402
from evoplast.cli import run_main  # noqa: E402
from evoplast.config import load_config  # noqa: E402


MEMORY_MODES = {
    "es": "ES generation (no grad)",
    "bptt": "BPTT, full",
    "bptt_w40": "BPTT, truncated (window 40)",
    "bptt_ckpt": "BPTT, full + activation checkpointing",
}


def _measure_once(mode: str, steps: int, threads: int) -> dict:
    """One measurement in this (fresh) process: seconds and peak RSS above the pre-call RSS."""
    import resource

    import psutil

    from evoplast.evaluation import Evaluator
    from evoplast.trainers.bptt import MetaTrainer

    torch.set_num_threads(threads)
    cfg = load_config(None, [*OJA_EVERY_LAYER, "network.hidden=[40,40]", "task.batch_size=8", "evaluation.reuse_memory=false",
                             f"task.batches_per_task={steps // 10}", "search.popsize=32", "evaluation.episodes=4",
                             "finetune.episodes=4", f"finetune.bptt_window={40 if mode == 'bptt_w40' else 'null'}",
                             f"finetune.checkpoint_activations={'true' if mode == 'bptt_ckpt' else 'false'}"])
    ev = Evaluator(cfg)
    genomes = ev.spec.initial_vector() + 0.01 * torch.randn(32, ev.spec.dim)
    trainer = MetaTrainer(cfg, ev.spec, genomes) if mode != "es" else None
    run = (lambda: ev.fitness(genomes, 0)) if mode == "es" else trainer.step
    before = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    run()
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024   # Linux: KiB
    return {"seconds": seconds, "peak_mb": max(0.0, (peak - before) / 2**20)}


def bench_memory(args) -> None:
    import json
    import os
    import subprocess

    print("memory benchmark: one ES generation vs one BPTT meta-step of the same work — 32 genomes x 4 episodes")
    print("(128 lifetimes) of 11-40-40-1, oja on every layer, mini-batches of 8 — as the lifetime grows.")
    print("Peak memory = the process's peak RSS during the call minus its RSS before it (one fresh process each).")
    header = f"{'lifetime steps':>14} " + " ".join(f"{MEMORY_MODES[m]:>38}" for m in MEMORY_MODES)
    print(header)
    print(f"{'':>14} " + " ".join(f"{'peak MB':>26} {'seconds':>11}" for _ in MEMORY_MODES))
    for steps in (40, 100, 400, 1000):
        cells = []
        for mode in MEMORY_MODES:
            # memory: glibc keeps freed heap memory mapped unless large blocks are mmap'd; with a fixed
            # threshold RSS follows the memory really in use (otherwise it overstates BPTT's peaks up to 6x).
            # That setting slows allocation, so the time comes from a second process without it.
            r = {}
            for key, env in (("peak_mb", {"MALLOC_MMAP_THRESHOLD_": "65536"}), ("seconds", {})):
                proc = subprocess.run([sys.executable, __file__, "--one", mode, str(steps),
                                       "--threads", str(args.threads)], capture_output=True, text=True,
                                      timeout=1800, env={**os.environ, **env})
                if proc.returncode != 0:
                    raise RuntimeError(proc.stderr[-2000:])
                r[key] = json.loads(proc.stdout.strip().splitlines()[-1])[key]
            cells.append(f"{r['peak_mb']:>26.1f} {r['seconds']:>11.2f}")
        print(f"{steps:>14} " + " ".join(cells), flush=True)


def main(argv: list[str] | None = None) -> int:
    import argparse

    from evoplast.cli import parser

    p = parser(__doc__.splitlines()[0], "bench_memory.py", config=False, tracking=False)   # one-line errors
    p.add_argument("--threads", type=int, default=min(2, torch.get_num_threads()))
    p.add_argument("--one", nargs=2, metavar=("MODE", "STEPS"), help=argparse.SUPPRESS)   # one measuring process
    args = p.parse_args(argv)
    if args.one:
        import json

        print(json.dumps(_measure_once(args.one[0], int(args.one[1]), args.threads)))
        return 0
    bench_memory(args)
    return 0


if __name__ == "__main__":
    run_main(main)
