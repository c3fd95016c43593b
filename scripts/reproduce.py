#!/usr/bin/env python
"""Reproduce Lindsey & Litwin-Kumar (2020) on the continual sinusoid stream: FLP (all layers plastic) by BPTT
and by ES then BPTT, the output-only FLP model, OML and SGD of the same weights, at equal meta-steps and equal
wall-clock, over seeds (docs/reproduction.md).

    python scripts/reproduce.py [--config configs/flp.yaml] [--seeds 0 1 2 3 4] [--meta-steps 150]
                                [--rounds 5] [--out docs/reproduction/blocked] [key=value ...]

Reads top to bottom: config -> interleaved timing of each method's meta-step (median of --rounds rounds, one
process) -> per-method step budgets (equal meta-steps; equal wall-clock = the seconds FLP-BPTT needs for
--meta-steps) -> one library call per seed (evoplast.science.reproduction.run) -> tables (markdown, printed and
written to OUT.md), the raw numbers (OUT.json) and the curve plot (docs/img/reproduction-NAME.png,
NAME the last part of OUT). One thread, one process.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/flp.yaml", help="YAML config (default: configs/flp.yaml)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="seeds (default 0-4)")
    p.add_argument("--meta-steps", type=int, default=150, help="meta-steps of every method in the equal-steps "
                   "table; the equal wall-clock budget is the seconds FLP-BPTT takes for them")
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (median per method)")
    p.add_argument("--es-share", type=float, default=0.125, help="share of the budget ES gets in ES then BPTT")
    p.add_argument("--arms", nargs="+", default=None, help="subset of methods (default: all)")
    p.add_argument("--no-paper-stream", action="store_true", help="skip the 40 x 32 evaluation row")
    p.add_argument("--out", default="docs/reproduction/blocked", help="writes OUT.md, OUT.json and docs/img/reproduction-<last part of OUT>.png")
    p.add_argument("--title", default="", help="title of the table")
    p.add_argument("--from-json", default=None, help="re-render the tables and plot of an earlier run's OUT.json "
                   "(no meta-training)")
    p.add_argument("overrides", nargs="*", help="config overrides key=value (e.g. task.order=iid)")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from evoplast.science import reproduction as R
    from evoplast.config import load_config

    import shlex

    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        result = {"calibration": saved["calibration"], "seeds": saved["seeds"], "seconds": saved["seconds"],
                  "meta_steps": saved["meta_steps"], "aggregate": R.aggregate(saved["seeds"])}
        command = saved["command"]
    else:
        cfg = load_config(args.config, args.overrides)
        keys = tuple(args.arms or R.ARMS)
        result = R.run(cfg, args.seeds, args.meta_steps, rounds=args.rounds, es_share=args.es_share, keys=keys,
                       paper_stream=not args.no_paper_stream, log=lambda s: print(s, flush=True))
        command = "python scripts/reproduce.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    text = R.markdown(result, args.title) + f"\n\nCommand: `{command}`\n"
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text)
    if not args.from_json:
        out.with_suffix(".json").write_text(json.dumps(R.to_json(result) | {"command": command}, indent=1))
    image = Path("docs/img") / f"reproduction-{out.name}.png"
    image.parent.mkdir(parents=True, exist_ok=True)
    plot(result, image, args.title)
    print(f"wrote {out.with_suffix('.md')}, {out.with_suffix('.json')}, {image}")
    return 0


def plot(result, path: Path, title: str) -> None:
    """The paper's curve: MSE over the sinusoids seen so far, after each sinusoid, per method (mean and 95% CI
    over seeds), one panel per budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from evoplast.science.reproduction import ARMS, BASELINES, BUDGETS

    from evoplast.science.reproduction import aggregate, diverged_seeds

    labels = ARMS | BASELINES
    bad = diverged_seeds(result["seeds"])
    kept = [s for s in result["seeds"] if s["seed"] not in bad]
    agg = aggregate(kept) if bad and len(kept) >= 2 else result["aggregate"]
    if agg is not result["aggregate"]:
        title = (title + "; " if title else "") + f"without seed(s) {', '.join(map(str, bad))} (FLP diverged)"
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, budget in zip(axes, BUDGETS):
        for key, pts in agg["curves"][budget].items():
            x = list(range(1, len(pts) + 1))
            m = [q.mean for q in pts]
            h = [0.0 if q.half_width != q.half_width else q.half_width for q in pts]
            ax.plot(x, m, marker="o", ms=3, label=labels[key])
            ax.fill_between(x, [a - b for a, b in zip(m, h)], [a + b for a, b in zip(m, h)], alpha=0.15)
        ax.set_title(("equal meta-steps" if budget == "equal_steps" else "equal wall-clock"))
        ax.set_xlabel("sinusoids seen")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("query MSE over the sinusoids seen so far")
    axes[1].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
