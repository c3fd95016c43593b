#!/usr/bin/env python
"""Benchmarks that print numbers, each beside its baseline measured in the same process.

    python scripts/benchmark.py lifetime   # batched lifetime vs a per-genome loop vs a plain bmm
    python scripts/benchmark.py evolve     # generations/s with 0, 1, 2 Ray actors, light and heavy
    python scripts/benchmark.py memory     # peak memory and time: ES generation vs BPTT meta-step
    python scripts/benchmark.py allocator  # page faults and time per generation, evaluation.reuse_memory off / on
    python scripts/benchmark.py outer      # ES, BPTT, PES, hybrid at equal wall-clock: held-out MSE, memory

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

from evoplast.benchmarking import lifetime_cost, median_seconds, plain_bmm  # noqa: E402
from evoplast.cli import UsageError, run_main  # noqa: E402
from evoplast.config import load_config  # noqa: E402
from evoplast.learners import NetState, PlasticLearner  # noqa: E402

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"
SMALL = ["network.hidden=[40,40]", "task.batches_per_task=10", "task.batch_size=8"]          # 100 steps of 8
PAPER_WIDTH = ["network.hidden=[300,300]", "task.batches_per_task=40", "task.batch_size=32"]  # 400 steps of 32


# The model the lifetime and memory benchmarks measure (and docs/performance.md reports): oja on every layer.
OJA_EVERY_LAYER = ["rule.name=oja", "rule.eta_scale=0.01", "rule.batch_reduction=sum", "network.plastic_layers=[]",
                   "finetune.after_evolution=false"]


# issue targets: (config, P, what, threshold)
LIFETIME_TARGETS = (("small 11-40-40-1", 256, "fraction", 0.6), ("paper width 11-300-300-1", 64, "fraction", 0.7),
                    ("small 11-40-40-1", 64, "batched/loop", 20.0), ("paper width 11-300-300-1", 64, "batched/loop", 5.0))


def benchmark_population(spec, p: int, noise: float = 0.01):
    """``[p, D]`` genomes: the initial genome with every segment but eta perturbed by ``noise`` x N(0, 1).
    Eta keeps its initial value: noise on it would give some genomes a negative (growing) rule, and a
    diverged lifetime is not what a benchmark should time (every lifetime here stays finite, checked)."""
    center = spec.initial_vector()
    raw = spec.split(center + noise * torch.randn(p, spec.dim))
    fixed = spec.split(center)
    return spec.join({n: fixed[n].expand_as(v) if n.endswith(".eta") else v for n, v in raw.items()})


class RowMajorLearner(PlasticLearner):
    """The eager learner with its weights in PyTorch's default row-major layout: the layout that
    :func:`evoplast.network.column_major` replaced, kept here to measure what that bought."""

    def init_state(self, params):
        state = super().init_state(params)
        return NetState(tuple(w.contiguous() for w in state.weights), state.biases)


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


def bench_evolve(args) -> None:
    import os

    os.environ.setdefault("RAY_AUTH_MODE", "disabled") if args.no_auth else None
    import ray

    from evoplast.evaluation import Evaluator
    from evoplast.evolution.ray_pool import RayPool, init_ray
    from evoplast.evolution.trainer import EvolutionTrainer

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
            trainers[a] = EvolutionTrainer(cfg, evaluate, Evaluator(cfg).spec.initial_vector())
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
            proc = subprocess.run([sys.executable, __file__, "allocator", "--reuse", str(reuse).lower(),
                                   "--threads", str(args.threads)], capture_output=True, text=True, timeout=600)
            if proc.returncode != 0:
                raise RuntimeError(proc.stderr[-2000:])
            rows[reuse].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    for reuse in (False, True):
        faults = statistics.median(r["faults"] for r in rows[reuse])
        ms = statistics.median(r["ms"] for r in rows[reuse])
        print(f"  reuse_memory={str(reuse).lower():<5}  page faults / generation {faults:8.0f}   ms / generation {ms:6.1f}")


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
    from evoplast.metatrain import MetaTrainer

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
                proc = subprocess.run([sys.executable, __file__, "memory", "--one", mode, str(steps),
                                       "--threads", str(args.threads)], capture_output=True, text=True,
                                      timeout=1800, env={**os.environ, **env})
                if proc.returncode != 0:
                    raise RuntimeError(proc.stderr[-2000:])
                r[key] = json.loads(proc.stdout.strip().splitlines()[-1])[key]
            cells.append(f"{r['peak_mb']:>26.1f} {r['seconds']:>11.2f}")
        print(f"{steps:>14} " + " ".join(cells), flush=True)


def bench_outer(args) -> None:
    """Every outer trainer from scratch at the same budget of seconds, over seeds and regimes."""
    import json

    from evoplast.stats import format_interval, mean_ci, paired_ci
    from evoplast.trainers.compare import describe, methods, regime_config, run_method

    names = list(methods())
    chosen = names if not args.methods else [n for n in names if any(m.lower() in n.lower() for m in args.methods)]
    if args.popsizes:                              # the population sweep: PGPE at each size, besides --methods
        chosen = list(chosen if args.methods else [])
        chosen += [f"ES (PGPE, P={p})" for p in args.popsizes if f"ES (PGPE, P={p})" not in chosen]
    if not chosen:
        raise UsageError(f"--methods matches none of: {', '.join(names)}")
    torch.set_num_threads(args.threads)
    base = load_config(args.config, args.overrides)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"outer benchmark: {len(chosen)} methods x {len(args.seeds)} seeds x regimes {', '.join(args.regimes)}; "
          f"{args.budget:g} CPU s of steps per run, {args.threads} thread(s); held-out MSE of the recommended genome "
          f"(mean ± 95% t-interval over seeds)", flush=True)
    results: dict[str, dict[str, list]] = {}
    log = out_dir / "outer.jsonl"                 # every run as it ends (seed after seed: partial results stay paired)
    for regime in args.regimes:
        regime_config(base, regime, 0)            # an unknown regime fails before any run
    for regime in args.regimes:
        results[regime] = {name: [] for name in chosen}
        for seed in args.seeds:
            for name in chosen:
                r = run_method(name, regime_config(base, regime, seed), args.budget)
                results[regime][name].append(r)
                print(f"  {regime:<7} {name:<28} seed {seed}: {r.steps:5d} steps, held-out MSE {r.loss:.3f}, "
                      f"episode gain {r.episode_gain:+.3f}, peak {r.peak_mb:.1f} MB", flush=True)
                with log.open("a") as f:
                    f.write(json.dumps({"regime": regime, **r.__dict__}) + "\n")
    lines = _outer_table(results, base, args, describe, mean_ci, paired_ci, format_interval)
    print()
    print("\n".join(lines))
    (out_dir / "outer.md").write_text("\n".join(lines) + "\n")
    (out_dir / "outer.json").write_text(json.dumps({reg: {n: [r.__dict__ for r in runs] for n, runs in by.items()}
                                                   for reg, by in results.items()}, indent=1))
    _outer_plot(results, out_dir / "outer.png")
    print(f"\nwrote {out_dir / 'outer.md'}, {out_dir / 'outer.json'}, {out_dir / 'outer.png'}")


def _outer_table(results, base, args, describe, mean_ci, paired_ci, format_interval) -> list[str]:
    lines = []
    for regime, by in results.items():
        from evoplast.trainers.compare import parse_regime, regime_steps

        T = regime_steps(base, regime)
        eta = parse_regime(base, regime)[1]
        lines += [f"### {regime}: lifetime of {T} steps of {base.task.batch_size}"
                  + (f", rule.eta_scale x{eta:g}" if eta != 1 else "") + f", {args.budget:g} CPU s per run ({args.threads} thread(s)), "
                  f"seeds {', '.join(map(str, args.seeds))}", "",
                  "| method | steps | lifetimes/s | held-out MSE | episode-specific gain | MSE − BPTT full (paired) "
                  "| MSE − BPTT truncated (paired) | peak MB / step | setup |", "|---|---|---|---|---|---|---|---|---|"]
        ref = by.get("BPTT full")
        ref_t = by.get("BPTT truncated")
        ranked = sorted(by, key=lambda n: sum(r.loss for r in by[n]) / len(by[n]))
        for name in ranked:
            runs = by[name]
            steps = sum(r.steps for r in runs) / len(runs)
            rate = sum(r.lifetimes / r.seconds for r in runs) / len(runs)
            diff = format_interval(paired_ci([r.loss for r in runs], [r.loss for r in ref])) \
                if ref is not None and name != "BPTT full" else ""
            diff_t = format_interval(paired_ci([r.loss for r in runs], [r.loss for r in ref_t])) \
                if ref_t is not None and name != "BPTT truncated" else ""
            peak = statistics.median(r.peak_mb for r in runs)
            lines.append(f"| {name} | {steps:.0f} | {rate:.0f} | {format_interval(mean_ci([r.loss for r in runs]))} | "
                         f"{format_interval(mean_ci([r.episode_gain for r in runs]))} | {diff} | {diff_t} | {peak:.1f} | "
                         f"{describe(name, T)} |")
        lines += ["", f"Best held-out MSE in this regime: **{ranked[0]}**.", ""]
    return lines


def _outer_plot(results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 2, figsize=(12, 4.5 * len(results)), squeeze=False)
    for row, (regime, by) in enumerate(results.items()):
        ax_t, ax_m = axes[row]
        for i, (name, runs) in enumerate(by.items()):
            color = f"C{i}"
            for j, r in enumerate(runs):
                xs, ys = zip(*r.curve)
                ax_t.plot(xs, ys, color=color, alpha=0.8, label=name if j == 0 else None)
                ax_m.scatter([r.peak_mb], [r.loss], color=color, label=name if j == 0 else None)
        ax_t.set(title=f"{regime}: held-out MSE vs time", xlabel="CPU seconds of steps", ylabel="held-out MSE",
                 yscale="log")
        ax_m.set(title=f"{regime}: final held-out MSE vs peak memory of a step", xlabel="peak MB per step",
                 ylabel="held-out MSE", xscale="symlog", yscale="log")
        ax_t.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    import argparse

    from evoplast.cli import parser

    p = parser(__doc__.splitlines()[0], "benchmark.py", config=False, tracking=False)   # one-line errors, --help-config
    p.add_argument("which", choices=["lifetime", "evolve", "memory", "allocator", "outer"])
    p.add_argument("--config", metavar="PATH", help="outer: base config (default: the defaults, configs/default.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="outer: config overrides")
    p.add_argument("--reuse", choices=["true", "false"], help=argparse.SUPPRESS)   # allocator: one process
    p.add_argument("--rounds", type=int, default=3, help="allocator: processes per setting")
    p.add_argument("--one", nargs=2, metavar=("MODE", "STEPS"), help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=min(2, torch.get_num_threads()))
    p.add_argument("--generations", type=int, default=10)
    p.add_argument("--only", choices=["light", "heavy"], help="evolve: run one of the two configurations")
    p.add_argument("--no-auth", action="store_true", help="RAY_AUTH_MODE=disabled for the throwaway local Ray")
    p.add_argument("--budget", type=float, default=20.0,
                   help="outer: CPU seconds of steps per run (= wall-clock on an idle core at --threads 1)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="outer: run seeds")
    p.add_argument("--regimes", nargs="+", default=["default", "long"],
                   help="outer: default (100 steps), long (10x the steps) and/or T<steps>[-eta<k>] "
                        "(e.g. T4000-eta16: 4,000 steps, rule.eta_scale x16)")
    p.add_argument("--methods", nargs="+", help="outer: only the methods whose name contains one of these")
    p.add_argument("--popsizes", type=int, nargs="+", help="outer: PGPE at these population sizes (a sweep)")
    p.add_argument("--set", nargs="*", default=[], help=argparse.SUPPRESS)   # the old spelling of the overrides
    p.add_argument("--out-dir", default="benchmarks", help="outer: where outer.md, outer.json, outer.png go")
    args = p.parse_intermixed_args(argv)      # `outer key=value --budget 5`: overrides anywhere
    args.overrides = [*args.overrides, *args.set]
    if args.overrides and args.which != "outer":
        raise UsageError(f"{args.which}: config overrides apply only to the outer benchmark "
                         f"(got {' '.join(args.overrides)})")
    if args.budget <= 0:
        raise UsageError("--budget must be > 0 seconds")
    if args.one:
        import json

        print(json.dumps(_measure_once(args.one[0], int(args.one[1]), args.threads)))
        return 0
    if args.reuse:
        import json

        print(json.dumps(_allocator_once(args.reuse == "true", args.threads)))
        return 0
    {"lifetime": bench_lifetime, "evolve": bench_evolve, "memory": bench_memory,
     "allocator": bench_allocator, "outer": bench_outer}[args.which](args)
    return 0


if __name__ == "__main__":
    run_main(main)
