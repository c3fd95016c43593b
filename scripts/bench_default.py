#!/usr/bin/env python
"""Which pipeline should ``scripts/evolve.py`` run? ``python scripts/bench_default.py --seeds 0 1 2 3 4``.

The default pipeline (ES, then BPTT from the search center) and candidates against BPTT from scratch at
equal CPU time of the whole training pipeline, paired over seeds, on held-out episodes
(:mod:`evoplast.bench.verdict`). One thread; CPU seconds of the process (wall-clock on an idle core). Every run
is appended to ``--out-dir/default_verdict.jsonl`` as it ends, and a second call with the same file
continues where the first stopped; the table goes to ``--out-dir/default_verdict.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", metavar="PATH", help="base config (default: the defaults, configs/default.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--methods", nargs="*", help="candidates besides the default and BPTT (default: all)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out-dir", default="benchmarks")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from evoplast.config import load_config
    from evoplast.bench.verdict import candidates, markdown, run_verdict, to_json

    base = load_config(args.config, args.overrides)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "default_verdict.jsonl"
    done = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.exists() else []

    def on_result(r):
        print(f"seed {r.seed} | {r.method:<45s} | {r.steps:5d} steps | {r.seconds:6.1f} CPU s | "
              f"held-out MSE {r.loss:.3f} | {r.marks}", flush=True)
        with log.open("a") as f:
            f.write(to_json(r) + "\n")

    v = run_verdict(base, args.seeds, args.methods, done=done, on_result=on_result)
    notes = {n: c.note for n, c in candidates(base).items()}
    lines = markdown(v, notes)
    print("\n".join(lines))
    (out / "default_verdict.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'default_verdict.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
