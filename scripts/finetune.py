#!/usr/bin/env python
"""Gradient meta-training (BPTT) of an evolution run's best genomes, or from scratch.

    python scripts/finetune.py --run-id RUN [--top-k N] [finetune.steps=200 ...]
    python scripts/finetune.py --checkpoint checkpoints/RUN/latest.pt
    python scripts/finetune.py --config configs/default.yaml      # the paper's method, no evolution
    python scripts/finetune.py --resume checkpoints/RUN/latest.pt  # a fine-tune stopped by Ctrl-C

Reads top to bottom: the genomes and their config -> a nested MLflow run -> meta-steps (one line every
few) -> held-out MSE before and after, on the same held-out episodes as the evolution's report.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evoplast.cli import UsageError, apply_tracking_uri, config_from_args, parser, require_store, run_main  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = parser("Fine-tune evolved genomes by backpropagation through their lifetimes.", "finetune.py")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--run-id", help="evolution run whose best genomes to fine-tune")
    source.add_argument("--checkpoint", help="evolution checkpoint file to take the genomes from")
    source.add_argument("--resume", metavar="CHECKPOINT",
                        help="checkpoints/RUN/latest.pt of a stopped fine-tune: continue it")
    p.add_argument("--top-k", type=int, default=None, metavar="N", help="how many genomes (default finetune.top_k)")
    args = p.parse_args(argv)

    if args.resume and args.config:
        raise UsageError("--resume takes the config from the checkpoint; drop --config")
    if not (args.run_id or args.checkpoint or args.resume):
        cfg = config_from_args(args)       # checked before the heavy imports below
    apply_tracking_uri(args)

    from evoplast.runs.finetune import check_finetune_overrides, run_finetune
    from evoplast.runs.artifacts import candidates_from_checkpoint, candidates_from_run
    from evoplast.runs.tracking import Tracker, resolve_tracking_uri

    # 1. what to fine-tune: a run's genomes (center first, then its last population), or a fresh genome
    if args.top_k is not None and args.top_k < 1:
        raise UsageError("--top-k must be >= 1")
    resume = None
    if args.resume:
        from evoplast.runs.checkpoint import CheckpointError, load_checkpoint
        from evoplast.runs.session import command_of, resume_config, resume_script

        resume = load_checkpoint(args.resume)
        if command_of(resume) != "finetune":
            raise CheckpointError(f"{args.resume!r} is not a fine-tune's checkpoint: "
                                  f"`{resume_script(resume)} {args.resume}`")
        overrides = [*args.overrides, *([f"tracking.tracking_uri={args.tracking_uri}"] if args.tracking_uri else [])]
        cfg = resume_config(resume, overrides, "finetune")
        genomes, labels, parent = None, list(resume["labels"]), resume.get("parent_run_id") or None
        print(f"evoplast: resuming fine-tune run {resume['mlflow_run_id']} from meta-step {resume['step']} "
              f"({args.resume})")
    elif args.run_id or args.checkpoint:
        if args.config:
            raise UsageError("--config goes with neither --run-id nor --checkpoint (the run's config is used)")
        check_finetune_overrides(args.overrides)
        top_k = args.top_k
        if args.run_id:
            require_store(resolve_tracking_uri(), args.run_id)      # never a new empty mlflow.db
            tracker = Tracker(resolve_tracking_uri())
            c = candidates_from_run(tracker, args.run_id, top_k or 1, args.overrides)
        else:
            c = candidates_from_checkpoint(args.checkpoint, top_k or 1, args.overrides)
        if top_k is None and c.cfg.finetune.top_k > 1:   # the config's choice, read now that it is known
            c = (candidates_from_run(tracker, args.run_id, c.cfg.finetune.top_k, args.overrides) if args.run_id
                 else candidates_from_checkpoint(args.checkpoint, c.cfg.finetune.top_k, args.overrides))
        cfg, genomes, labels, parent = c.cfg, c.genomes, c.labels, c.run_id
    else:
        genomes, labels, parent = None, [], None

    # 2. meta-train, nested under the evolution run
    result = run_finetune(cfg, genomes, labels, parent_run_id=parent, resume=resume)

    # 3. held-out MSE before / after, on the evolution report's held-out episodes
    print()
    print(f"MLflow run {result.run_id}" + (f" (nested under {parent})" if parent else "") +
          f": {cfg.finetune.steps} meta-steps; held-out query MSE ({cfg.evaluation.heldout_episodes} episodes):")
    print(f"  {'genome':<18} {'before':>8} {'after':>8} {'episode gain before':>20} {'after':>7}")
    for i, label in enumerate(result.labels):
        b, a = result.before[i], result.after[i]
        mark = "  <- kept (best on validation episodes)" if i == result.chosen else ""
        print(f"  {label:<18} {b['loss']:8.3f} {a['loss']:8.3f} {b['episode_gain']:20.3f} {a['episode_gain']:7.3f}{mark}")
    print(f"Fine-tuned genome: artifact finetuned_genome.pt of run {result.run_id}")
    print(f"Look at it: {result.ui_command}")
    from evoplast.runs.run_page import next_commands
    from evoplast.runs.tracking import redact_uri

    print("Next:")
    for command in next_commands(parent or result.run_id, finetuned=True,
                                 uri=redact_uri(resolve_tracking_uri(cfg.tracking.tracking_uri))):
        print(f"  {command}")
    return 0


if __name__ == "__main__":
    run_main(main)
