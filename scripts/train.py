#!/usr/bin/env python
"""Train a plasticity rule with any outer trainer: ES, BPTT, PES, NRES or the hybrid (ES, then BPTT).

    python scripts/train.py --outer pes [--config F] [key=value ...] [--steps N]
    python scripts/train.py --resume checkpoints/RUN/latest.pt [--steps N]

Reads top to bottom: config -> (resume) -> an MLflow run (metrics meta/..., speed/..., heldout/loss every
finetune.eval_every steps) -> one progress line per few steps -> held-out MSE and the next commands.
Ctrl-C finishes the step, writes checkpoints/<run id>/latest.pt, exits 130 and prints the resume command;
--resume continues the same MLflow run and ends where an uninterrupted run ends, bit for bit.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evoplast.cli import count, UsageError, config_from_args, parser, run_main  # noqa: E402

OUTERS = ("es", "bptt", "pes", "hybrid", "nres")
# what a resume may change: tracking.* and device; an ES run (an evolution) also its generations, Ray, ...
# (evoplast.runs.session.RESUMABLE, checked again once the checkpoint says which command wrote it)
RESUMABLE_ANY = ("tracking.", "device", "search.generations", "ray.", "checkpoint.every")


def main(argv: list[str] | None = None) -> int:
    p = parser("Train a plasticity rule with one outer trainer (es, bptt, pes, hybrid, nres), tracked in MLflow.",
               "train.py")
    p.add_argument("--outer", choices=OUTERS, default=None,
                   help="es: evolution (search.*); bptt: backprop through the lifetime (finetune.*); pes: "
                        "persistent ES over truncations; hybrid: ES for search.generations, then BPTT; nres: noise-reuse ES "
                        "over truncations")
    p.add_argument("--steps", type=int, default=None, metavar="N",
                   help="the run's total steps (default: search.generations / finetune.steps / both for hybrid; "
                        "resuming: the checkpoint's)")
    p.add_argument("--resume", metavar="CHECKPOINT", help="checkpoints/RUN/latest.pt of a stopped train.py run")
    p.add_argument("--print-every", type=count, default=0, metavar="N", help="a progress line every N steps")
    args = p.parse_args(argv)

    if args.steps is not None and args.steps < 1:
        raise UsageError("--steps must be >= 1")
    if args.resume:
        if args.config:
            raise UsageError("--resume takes the config from the checkpoint; drop --config")
        for item in args.overrides:          # before the checkpoint is read: what no resume may change
            key = item.split("=", 1)[0].strip()
            if not any(key == k or (k.endswith(".") and key.startswith(k)) for k in RESUMABLE_ANY):
                raise UsageError(f"{key} cannot change when resuming (only {', '.join(RESUMABLE_ANY)} can)")
        cfg = None
    else:
        if args.outer is None:
            raise UsageError("--outer is required (es, bptt, pes, hybrid or nres) unless --resume is given")
        cfg = config_from_args(args)       # checked before the heavy imports below

    from evoplast.runs.checkpoint import CheckpointError, load_checkpoint
    from evoplast.runs.session import command_of, resume_config, resume_script
    from evoplast.runs.train import run_training
    from evoplast.runs.tracking import redact_uri, resolve_tracking_uri

    # 1. the experiment: YAML + overrides, or the checkpoint's own config
    checkpoint = None
    if args.resume:
        checkpoint = load_checkpoint(args.resume)
        if command_of(checkpoint) == "finetune":
            raise CheckpointError(f"{args.resume!r} is a fine-tune's checkpoint: `{resume_script(checkpoint)} "
                                  f"{args.resume}`")
        checkpoint.setdefault("outer", "es")          # an evolution's checkpoint (evolve.py): ES
        checkpoint.setdefault("step", int(checkpoint.get("trainer", {}).get("generation", 0)))
        if args.outer is not None and args.outer != checkpoint["outer"]:
            raise UsageError(f"--outer {args.outer}: the checkpoint is of a {checkpoint['outer']} run")
        overrides = [*args.overrides, *([f"tracking.tracking_uri={args.tracking_uri}"] if args.tracking_uri else [])]
        cfg = resume_config(checkpoint, overrides, "train" if command_of(checkpoint) == "train" else "evolve")
        if args.steps is not None and args.steps < int(checkpoint["step"]):
            raise UsageError(f"--steps {args.steps}: the checkpoint is at step {checkpoint['step']} already")
        print(f"evoplast: resuming {checkpoint['outer']} run {checkpoint['mlflow_run_id']} from step "
              f"{checkpoint['step']} ({args.resume})")
    outer = checkpoint["outer"] if checkpoint else args.outer

    # 2. the run (a progress line every few steps; Ctrl-C checkpoints and stops cleanly)
    result = run_training(cfg, outer, steps=args.steps, resume=checkpoint, print_every=args.print_every)
    uri = redact_uri(resolve_tracking_uri(cfg.tracking.tracking_uri))
    env = f"MLFLOW_TRACKING_URI={uri} " if uri != "sqlite:///mlflow.db" else ""
    if result.status != "FINISHED":
        print(f"evoplast: stopped by {result.stopped_by or 'a signal'} after step {result.step}/{result.steps}; "
              f"checkpoint {result.checkpoint}")
        print(f"Resume: {env}python scripts/train.py --resume {result.checkpoint}")
        return 130

    # 3. the result and what to do next
    print()
    metric = "MSE" if cfg.task.name == "sinusoid" else "loss"
    print(f"MLflow run {result.run_id} ({outer}): {result.step} steps; held-out query {metric} "
          f"({cfg.evaluation.heldout_episodes} episodes) {result.heldout_loss:.3f}")
    print(f"Look at it: {result.ui_command}")
    from evoplast.runs.pipeline import next_lines

    for line in next_lines(result.run_id, False, cfg):
        print(line)
    print(f"  {env}python scripts/train.py --resume {result.checkpoint} --steps {2 * result.steps}   # train on")
    return 0


if __name__ == "__main__":
    run_main(main)
