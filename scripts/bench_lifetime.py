#!/usr/bin/env python
"""The batched lifetime against a per-genome loop and a plain bmm: ``python scripts/bench_lifetime.py``.

Timings on a shared 2-core machine vary by up to +-30% from run to run: every number is a median of
repetitions, and the ratios are taken side by side in one process.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from evoplast.bench.timing import lifetime_cost, median_seconds, plain_bmm  # noqa: E402
from evoplast.bench.workloads import (OJA_EVERY_LAYER, PAPER_WIDTH, SMALL, RowMajorLearner,  # noqa: E402
                                      benchmark_population)
from evoplast.cli import run_main  # noqa: E402
from evoplast.config import load_config  # noqa: E402
from evoplast.learners import PlasticLearner  # noqa: E402


LIFETIME_TARGETS = (("small 11-40-40-1", 256, "fraction", 0.6), ("paper width 11-300-300-1", 64, "fraction", 0.7),
                    ("small 11-40-40-1", 64, "batched/loop", 20.0), ("paper width 11-300-300-1", 64, "batched/loop", 5.0))


def bench_lifetime(args) -> None:
    from dataclasses import replace

    from evoplast.evaluation import Evaluator, score_params
    from evoplast.seeding import Purpose

    torch.set_num_threads(args.threads)
    print(f"lifetime benchmark: torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, CPU")
    print("oja on every layer; lifetimes/s = genomes x 1 episode per second; GFLOP/s counts the forward and")
    print("Hebbian-update matmuls; 'loop' evaluates the same genomes one at a time (as reference code does) with")
    print("the same kernel as the row; 'bmm' is a plain batched matmul of the same shapes (the faster of two")
    print("weight layouts). Variants: 'fused' (the default: evoplast.fused, one C++ call per step), 'eager'")
    print("(PyTorch ops, evaluation.fused_kernel=false), 'fused / eager chunks' (slices of 8 / 16 genomes), 'row-major'")
    print("(eager with the weights row-major, as before network.column_major), 'compiled'")
    print("(evaluation.compile). Medians of repetitions; ratios taken side by side in this process. 'ceiling'")
    print("under the targets: the batched/loop ratio of a lifetime as fast as the plain bmm, against the eager loop.")
    header = (f"{'config':<28} {'P':>4} {'variant':>12} {'steps':>5} {'lifetimes/s':>12} {'GFLOP/s':>8} "
              f"{'loop l/s':>9} {'batched/loop':>12} {'bmm GFLOP/s':>11} {'fraction':>8}")
    print(header)
    print("-" * len(header))
    best: dict[tuple[str, int], dict[str, float]] = {}
    for name, overrides, populations, steps_timed in (
            ("small 11-40-40-1", SMALL + ["rule.eta_init=0.01"], (1, 16, 64, 256), None),
            ("paper width 11-300-300-1", PAPER_WIDTH + ["rule.eta_init=0.0001"], (1, 16, 64), 40)):
        cfg = load_config(None, OJA_EVERY_LAYER + overrides + ["genome.evolve_init_weights=true", "evaluation.episodes=1"])
        ev = Evaluator(cfg)
        eager = PlasticLearner(ev.spec.model, fused=False)
        row_major = RowMajorLearner(ev.spec.model, fused=False)
        compiled = PlasticLearner(ev.spec.model, fused=False)
        compiled.step_and_predict = torch.compile(compiled.step_and_predict, dynamic=False)
        full = ev.episodes(Purpose.TRAIN, 0, 1)
        steps = steps_timed or full.num_steps
        # at paper width a prefix of the stream is timed (400 steps x P=64 x the loop take minutes);
        # the cost per step is flat, and lifetimes/s is scaled to the full 400-step lifetime
        episodes = replace(full, stream_x=full.stream_x[:, :steps], stream_y=full.stream_y[:, :steps],
                           stream_task=full.stream_task[:, :steps], curve_steps=())
        scale = full.num_steps / steps
        flops = lifetime_cost(ev.spec.model, steps, cfg.task.batch_size)[0]   # forward + update matmuls
        for p in populations:
            pop = benchmark_population(ev.spec, p)
            params = ev.decode(pop)
            singles = [ev.decode(pop[i:i + 1]) for i in range(p)]
            reps = 5 if p * flops < 5e9 else 3
            variants = ([("fused", ev.learner, 0)] if ev.learner.fused else []) + [("eager", eager, 0)]
            if p >= 64:
                variants += ([("fused chunks", ev.learner, 8)] if ev.learner.fused else []) + \
                    [("eager chunks", eager, 16), ("row-major", row_major, 0), ("compiled", compiled, 0)]
            with torch.no_grad():
                if p == populations[-1]:
                    if score_params(ev.learner, params, full, cap=1e9).num_nonfinite:
                        raise RuntimeError("a benchmark lifetime diverged: lower its rule.eta_init")
                loop_reps = max(1, reps if p <= 16 else 1)
                t_loops = {learner.fused: median_seconds(lambda: [score_params(learner, s, episodes, cap=1e9)
                                                                  for s in singles],
                                                         reps=loop_reps, warmup=0 if p > 16 else 1)
                           for learner in {ev.learner, eager}}
                t_bmm = min(median_seconds(plain_bmm(ev.spec.model, p, cfg.task.batch_size, steps, layout=layout),
                                           reps=reps) for layout in ("row", "column"))
                for label, learner, chunk in variants:
                    t_batch = median_seconds(lambda: score_params(learner, params, episodes, cap=1e9, chunk=chunk),
                                             reps=reps, warmup=2 if label == "compiled" else 1)
                    t_loop = t_loops[learner.fused]
                    gflops = p * flops / t_batch / 1e9
                    bmm_gflops = p * flops / t_bmm / 1e9
                    row = {"fraction": gflops / bmm_gflops, "batched/loop": t_loop / t_batch}
                    slot = best.setdefault((name, p), {})
                    slot["ceiling"] = (t_loops[False] / t_bmm, "bmm")
                    for k, v in row.items():
                        slot[k] = max(slot.get(k, (0.0, "")), (v, label))
                    print(f"{name:<28} {p:>4} {label:>12} {full.num_steps:>5} {p / t_batch / scale:>12.1f} "
                          f"{gflops:>8.2f} {p / t_loop / scale:>9.1f} {t_loop / t_batch:>11.1f}x "
                          f"{bmm_gflops:>11.2f} {gflops / bmm_gflops:>8.2f}", flush=True)
    print()
    print("targets (best variant):")
    for name, p, what, threshold in LIFETIME_TARGETS:
        value, label = best[(name, p)][what]
        verdict = "pass" if value >= threshold else "short"
        ceiling = f"; ceiling {best[(name, p)]['ceiling'][0]:.2f}" if what == "batched/loop" else ""
        print(f"  {name:<26} P={p:<4} {what:<13} {value:6.2f} (target >= {threshold:g}, {label}{ceiling}): {verdict}")


def main(argv: list[str] | None = None) -> int:
    from evoplast.cli import parser

    p = parser(__doc__.splitlines()[0], "bench_lifetime.py", config=False, tracking=False)   # one-line errors
    p.add_argument("--threads", type=int, default=min(2, torch.get_num_threads()))
    args = p.parse_args(argv)
    bench_lifetime(args)
    return 0


if __name__ == "__main__":
    run_main(main)
