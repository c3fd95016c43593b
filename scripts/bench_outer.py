#!/usr/bin/env python
"""The outer trainers from scratch at equal CPU time: held-out MSE, memory (``python scripts/bench_outer.py``).

    python scripts/bench_outer.py --budget 10 --regimes default --methods BPTT hybrid --seeds 0 1 2
    python scripts/bench_outer.py --regimes T4000-eta16 --methods "BPTT truncated" NRES     # long lifetimes
    python scripts/bench_outer.py --popsizes 32 256 1024                                    # the population sweep

Budgets are CPU seconds of the process at ``--threads`` (wall-clock on an idle core at one thread); every
number is a mean over seeds with its 95% t-interval, and differences are paired by seed.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from evoplast.cli import UsageError, run_main  # noqa: E402
from evoplast.config import load_config  # noqa: E402


def bench_outer(args) -> None:
    """Every outer trainer from scratch at the same budget of seconds, over seeds and regimes."""
    import json

    from evoplast.science.stats import format_interval, mean_ci, paired_ci
    from evoplast.bench.compare import describe, methods, regime_config, run_method

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
        from evoplast.bench.compare import parse_regime, regime_steps

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

    p = parser(__doc__.splitlines()[0], "bench_outer.py", config=False, tracking=False)   # one-line errors, --help-config
    p.add_argument("--config", metavar="PATH", help="base config (default: the defaults, configs/default.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.add_argument("--threads", type=int, default=min(2, torch.get_num_threads()))
    p.add_argument("--budget", type=float, default=20.0,
                   help="CPU seconds of steps per run (= wall-clock on an idle core at --threads 1)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="run seeds")
    p.add_argument("--regimes", nargs="+", default=["default", "long"],
                   help="default (100 steps), long (10x the steps) and/or T<steps>[-eta<k>] "
                        "(e.g. T4000-eta16: 4,000 steps, rule.eta_scale x16)")
    p.add_argument("--methods", nargs="+", help="only the methods whose name contains one of these")
    p.add_argument("--popsizes", type=int, nargs="+", help="PGPE at these population sizes (a sweep)")
    p.add_argument("--set", nargs="*", default=[], help=argparse.SUPPRESS)   # the old spelling of the overrides
    p.add_argument("--out-dir", default="benchmarks", help="where outer.md, outer.json, outer.png go")
    args = p.parse_intermixed_args(argv)      # `outer key=value --budget 5`: overrides anywhere
    args.overrides = [*args.overrides, *args.set]
    if args.budget <= 0:
        raise UsageError("--budget must be > 0 seconds")
    bench_outer(args)
    return 0


if __name__ == "__main__":
    run_main(main)
