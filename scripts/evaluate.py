#!/usr/bin/env python
"""Evaluate a learned rule against the baselines on held-out episodes, with the paper's analyses.

    python scripts/evaluate.py --run-id RUN [--which best|finetuned] [--oml-budget lifetimes|wallclock|N] [key=value ...]
    python scripts/evaluate.py --config configs/glyphs.yaml          # the untrained (seed) genome

Reads top to bottom: the genome and its config -> the protocol on held-out episodes (meta-test classes for
classification) for the evolved rule and every baseline on the same streams -> accuracy vs N (classification)
-> update/gradient cosine and forgetting matrices -> a table, plots, and an MLflow run nested under RUN.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evoplast.cli import UsageError, apply_tracking_uri, config_from_args, parser, require_store, run_main  # noqa: E402

def main(argv: list[str] | None = None) -> int:
    p = parser("Evaluate a rule and the baselines on held-out episodes; analyses and plots.", "evaluate.py")
    p.add_argument("--run-id", metavar="RUN", help="evolution run to evaluate (its best genome, or its latest "
                                                     "fine-tune); without it, the config's seed genome")
    p.add_argument("--which", choices=["best", "finetuned"], default="best",
                   help="with --run-id: the evolution's recommended genome (the search center, default) or the "
                        "genome of its latest fine-tune (scripts/finetune.py, or finetune.after_evolution)")
    p.add_argument("--oml-budget", default="lifetimes", metavar="lifetimes|wallclock|N",
                   help="meta-compute of the OML baseline's meta-learned initial weights: 'lifetimes' (default: "
                        "as many lifetimes as the evolution lived, generations x popsize x episodes), 'wallclock' "
                        "(as many seconds as the evolution run took), or N meta-steps (0 = skip OML)")
    p.add_argument("--oml-steps", type=int, default=None, metavar="N", help="same as --oml-budget N")
    p.add_argument("--out", default=None, help="directory for the plots and the table (default evaluation/<run>)")
    args = p.parse_args(argv)
    if args.run_id and args.config:
        raise UsageError("--config goes without --run-id (the run's config is used)")
    if args.oml_steps is not None and args.oml_steps < 0:
        raise UsageError(f"--oml-steps {args.oml_steps}: give a number of meta-steps >= 0 (0 skips OML)")
    if args.run_id is not None and not args.run_id.strip():
        raise UsageError("--run-id is empty")
    if args.which != "best" and not args.run_id:
        raise UsageError(f"--which {args.which} needs --run-id (without it the config's seed genome is evaluated)")
    out_dir = Path(args.out or f"evaluation/{args.run_id or 'config'}")
    _check_out_dir(out_dir)                  # before any work
    budget = str(args.oml_steps) if args.oml_steps is not None else args.oml_budget
    if budget not in ("lifetimes", "wallclock") and not budget.isdigit():
        raise UsageError(f"--oml-budget {budget!r}: expected lifetimes, wallclock or a number of meta-steps >= 0")
    if budget == "wallclock" and not args.run_id:
        raise UsageError("--oml-budget wallclock needs --run-id of a finished evolution run (its duration)")
    cfg = None if args.run_id else config_from_args(args)    # checked before the heavy imports below
    apply_tracking_uri(args)

    from evoplast.runs.evaluate import run_evaluation
    from evoplast.runs.tracking import resolve_tracking_uri

    if args.run_id:
        from evoplast.runs.finetune import check_finetune_overrides

        check_finetune_overrides(args.overrides)                # exit 2 before the store is looked at
        require_store(resolve_tracking_uri(), args.run_id)      # never a new empty mlflow.db

    run_evaluation(cfg, run_id=args.run_id, which=args.which, budget=budget, out_dir=out_dir,
                   overrides=args.overrides)
    return 0


def _check_out_dir(out_dir: Path) -> None:
    """One line unless ``out_dir`` is, or can become, a writable directory: exit 2 for a file given as
    --out, exit 1 (:class:`~evoplast.export.RuleExportError`) for a place that cannot be written."""
    from evoplast.export import check_writable

    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {str(out_dir)!r} is a file; give a directory for the plots and the table")
    check_writable(out_dir / "evaluation.json")


if __name__ == "__main__":
    run_main(main)
