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
            from evoplast.tracking import resolve_tracking_uri

            require_store(resolve_tracking_uri(), args.resume)

    from evoplast.describe import CENTER
    from evoplast.evolution.run import resolve_resume, resume_config, run_evolution

    # 1. the experiment: YAML + overrides, or the checkpoint's own config when resuming
    checkpoint = None
    if args.resume:
        checkpoint, source = resolve_resume(args.resume)
        overrides = [*args.overrides, *([f"tracking.tracking_uri={args.tracking_uri}"] if args.tracking_uri else [])]
        cfg = resume_config(checkpoint, overrides)
        print(f"evoplast: resuming from {source}")

    # 2. the evolution (prints a line per generation; Ctrl-C checkpoints and stops cleanly)
    print_every = args.print_every or max(1, cfg.search.generations // 50)
    result = run_evolution(cfg, resume=checkpoint, print_every=print_every)
    if result.status != "FINISHED":
        return 130

    # 3. the summary: the evolved rule against its own init and online SGD, on held-out episodes
    r = result.report
    first = result.history[0]
    print()
    best = max(h["best"] for h in result.history)
    print(f"MLflow run {result.run_id}: {result.generations} generations, best training fitness "
          f"{first['best']:.3f} (generation 1) -> {best:.3f} (best so far)")
    metric = "MSE" if cfg.task.name == "sinusoid" else "cross-entropy and accuracy, meta-test classes"
    print(f"Held-out episodes ({cfg.evaluation.heldout_episodes}, {cfg.task.order} stream), query {metric} "
          f"(baselines: learning rate tuned on validation episodes):")
    rows = [
        (CENTER, "", ""),
        ("same genome, plasticity off", "_plasticity_off", ""),
        ("online SGD on the plastic weights only, same initial weights", "sgd_plastic_weights",
         r["sgd_plastic_weights_lr"]),
        ("online SGD on every weight and bias, same initial weights", "sgd_same_init", r["sgd_same_init_lr"]),
        ("feedback alignment, same initial weights", "fa_same_init", r["fa_same_init_lr"]),
        ("online SGD, seed's initial weights", "sgd_seed_init", r["sgd_seed_init_lr"]),
        ("online SGD on the shuffled (iid) stream, same initial weights", "sgd_iid_same_init",
         r["sgd_iid_same_init_lr"]),
    ]
    classification = "accuracy" in r
    if classification:
        print(f"  {'':<64s} {'loss':>7s} {'accuracy':>9s}")
    for name, key, lr in rows:
        loss_key = "loss" + key if key.startswith("_") or not key else key
        acc_key = ("accuracy" + key if key.startswith("_") or not key else key + "_accuracy")
        acc = f" {r[acc_key]:9.3f}" if classification else ""
        print(f"  {name:<64s} {r[loss_key]:7.3f}{acc}" + (f"   (lr {lr:g})" if lr != "" else ""))
    if classification:
        print(f"  {'nearest class mean on the initial features (prototypes)':<64s} {'':>7s} {r['prototype_accuracy']:9.3f}")
        print(f"  {'best input-only predictor (fitted on training episodes)':<64s} {'':>7s} {r['input_only_accuracy']:9.3f}")
    else:
        print(f"  {'best input-only predictor (fitted on training episodes)':<64s} {r['input_only']:7.3f}")
        for key, what in (("transfer_long", "4x longer stream"), ("transfer_wide", "4x larger batches"),
                          ("transfer_both", "4x longer, 4x larger batches")):
            if key in r:
                print(f"  {'transfer, ' + what + ': evolved rule':<64s} {r[key]:7.3f}   "
                      f"(non-finite {r[key + '_nonfinite']:.0%} of episodes)")
                print(f"  {'transfer, ' + what + ': SGD on the plastic weights':<64s} "
                      f"{r[key + '_sgd_plastic_weights']:7.3f}   (lr {r[key + '_sgd_plastic_weights_lr']:g})")
    print(f"  learning gain (plasticity off - on)                              {r['learning_gain']:+7.3f}")
    print(f"  episode-specific gain (other episode's tasks - own tasks)        {r['episode_gain']:+7.3f}")
    print(f"Checkpoint: {result.checkpoint}")
    finetuned = finetune_center(cfg, result) if cfg.finetune.after_evolution else False
    from evoplast.verdict import measured_line

    print(measured_line())              # what evolution in the loop is worth against BPTT alone, plainly
    print(f"Look at it: {result.ui_command}")
    print_next(result.run_id, finetuned, cfg)
    return 0


def print_next(run_id: str, finetuned: bool, cfg) -> None:
    """The "Next:" block: the commands that continue from this run, its id filled in."""
    from evoplast.describe import next_commands
    from evoplast.tracking import redact_uri, resolve_tracking_uri

    print("Next:")
    for command in next_commands(run_id, finetuned=finetuned,
                                 uri=redact_uri(resolve_tracking_uri(cfg.tracking.tracking_uri))):
        print(f"  {command}")


def finetune_center(cfg, result) -> bool:
    """4. the hybrid (finetune.after_evolution): BPTT from the search center, nested under the run; at equal
    time ES then BPTT beat either alone on the default task (docs/outer-trainers.md)."""
    from evoplast.describe import CENTER
    from evoplast.finetune import run_finetune

    steps = cfg.finetune.after_evolution_steps or cfg.finetune.steps
    ft_cfg = cfg.replace(**{"finetune.steps": steps})
    print()
    ft = run_finetune(ft_cfg, result.center.reshape(1, -1), [CENTER], parent_run_id=result.run_id,
                      print_every=max(1, steps // 5))
    b, a = ft.before[0], ft.after[0]
    print(f"Fine-tuned by BPTT ({steps} meta-steps, MLflow run {ft.run_id} nested under {result.run_id}): "
          f"held-out {'MSE' if cfg.task.name == 'sinusoid' else 'cross-entropy'} {b['loss']:.3f} -> {a['loss']:.3f}, "
          f"episode-specific gain {b['episode_gain']:+.3f} -> {a['episode_gain']:+.3f}")
    better = a["loss"] <= b["loss"]
    print(f"The rule to use: {'ES then BPTT (the fine-tuned genome)' if better else 'ES alone (the ' + CENTER + '; fine-tuning did not help on held-out episodes)'}")
    from evoplast.evolution.run import add_finetune_to_description

    from evoplast.describe import rule_equations
    from evoplast.finetune import train_spec_of

    evo_spec, spec = train_spec_of(cfg)
    add_finetune_to_description(cfg, result.run_id, ft.run_id, b["loss"], a["loss"], better, report=result.report,
                                generations=result.generations, history=result.history, steps=steps,
                                equations=rule_equations(evo_spec.model, evo_spec.decode(result.center.float())),
                                finetuned_equations=rule_equations(spec.model, spec.decode(ft.genome.float())),
                                finetuned_genome=ft.genome)
    return better


if __name__ == "__main__":
    run_main(main)
