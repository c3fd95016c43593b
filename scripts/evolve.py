#!/usr/bin/env python
"""Evolve a plasticity rule: ``python scripts/evolve.py [--config PATH] [key=value ...] [--run-id RUN]``.

Reads top to bottom: config -> (resume) -> run the evolution (local Ray or in-process, MLflow run,
a line per generation, checkpoints) -> a summary on held-out episodes -> how to look at it in MLflow.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from evoplast.cli import count, UsageError, apply_tracking_uri, config_from_args, parser, require_store, run_main  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """The command; ``argv`` without the program name (default: ``sys.argv[1:]``)."""
    p = parser("Evolve local plasticity rules and feedback weights with an evolution strategy.", "evolve.py",
               run_id="MLflow run to resume from its latest checkpoint (its own config; overrides apply)")
    p.add_argument("--resume", metavar="RUN|PATH", help="MLflow run id or checkpoint path to continue")
    p.add_argument("--print-every", type=count, default=0, metavar="N",
                   help="one progress line every N generations (default: about 50 lines per run)")
    args = p.parse_args(argv)
    if args.run_id is not None and args.resume is not None and args.run_id != args.resume:
        raise UsageError("--run-id and --resume name two runs; give one (--run-id RUN resumes RUN)")
    args.resume = args.resume or args.run_id
    if args.resume and args.config:
        raise UsageError("--resume/--run-id take the config from the checkpoint; drop --config")
    cfg = None if args.resume else config_from_args(args)   # checked before the heavy imports below

    if args.resume:
        apply_tracking_uri(args)
        path_like = "/" in args.resume or args.resume.endswith(".pt") or Path(args.resume).exists()
        if not path_like and not (Path("checkpoints") / args.resume / "latest.pt").is_file():
            # a run id without a local checkpoint: read from the store, which must exist (never a new empty one)
            from evoplast.runs.tracking import resolve_tracking_uri

            require_store(resolve_tracking_uri(), args.resume)

    from evoplast.runs.evolve import resolve_resume, resume_config
    from evoplast.runs.pipeline import evolve, next_lines

    # 1. the experiment: YAML + overrides, or the checkpoint's own config when resuming
    checkpoint = None
    if args.resume:
        checkpoint, source = resolve_resume(args.resume)
        overrides = [*args.overrides, *([f"tracking.tracking_uri={args.tracking_uri}"] if args.tracking_uri else [])]
        cfg = resume_config(checkpoint, overrides)
        print(f"evoplast: resuming from {source}")

    # 2. the pipeline: the evolution (a line per generation; Ctrl-C checkpoints and stops cleanly), its
    # summary on held-out episodes, then BPTT from the search center (finetune.after_evolution)
    result = evolve(cfg, resume=checkpoint, print_every=args.print_every)
    if result.status != "FINISHED":
        return 130

    # 3. how to look at it, what to do next
    print(f"Look at it: {result.evolution.ui_command}")
    for line in next_lines(result.run_id, result.finetuned_better, cfg):
        print(line)
    return 0


if __name__ == "__main__":
    run_main(main)
