#!/usr/bin/env python
"""Export a learned rule to one file that loads with PyTorch alone, and register it in MLflow.

    python scripts/export.py --run-id RUN [--which best|finetuned] --out rule.pt2 [--name NAME]

Reads top to bottom: check that --out can be written -> find the genome in the run -> write the .pt2
(torch.export, nothing pickled) and its .safetensors twin (the rule as data) -> reload it the safe way and
compare it with evoplast's own step -> log both files to MLflow (pytorch flavour; the model directory
carries data/rule.safetensors too) in a run nested under RUN and register a new version.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evoplast.cli import UsageError, apply_tracking_uri, parser, require_store, run_main  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = parser("Export a learned rule as a torch.export (.pt2) file.", "export.py", config=False,
               run_id="evolution run (or a fine-tune run) to export from (required)")
    p.add_argument("--config", help=argparse.SUPPRESS)   # refused below: the config is the run's own
    p.add_argument("--which", choices=["best", "finetuned"], default="best",
                   help="the evolution's best genome, or its latest fine-tuned genome")
    p.add_argument("--out", required=True, help="output file (.pt2)")
    p.add_argument("--name", default=None, help="Model Registry name (default: export.registered_model)")
    p.add_argument("--no-mlflow-model", action="store_true", help="write the file only")
    args, extra = p.parse_known_args(argv)
    if args.config is not None or any("=" in a and not a.startswith("-") for a in extra):
        raise UsageError("export.py takes the config from the run (--run-id); --config and key=value overrides "
                         "do not apply")
    if extra:
        p.error(f"unrecognized arguments: {' '.join(extra)}")
    if not args.run_id or not args.run_id.strip():
        raise UsageError("--run-id RUN is required: the evolution or fine-tune run to export from")
    apply_tracking_uri(args)
    from evoplast.export import check_writable

    if not args.out.endswith(".pt2"):
        raise UsageError(f"--out {args.out!r} should end in .pt2 (a torch.export archive)")
    if Path(args.out).is_dir():
        raise UsageError(f"--out {args.out!r} is a directory; give a file name ending in .pt2")
    if args.name is not None and not args.name.strip():
        raise UsageError("--name is empty; give a Model Registry name or leave it out")
    check_writable(args.out)             # before any work: an unwritable --out is one line, not a traceback

    import torch
    import yaml

    from evoplast.config import from_dict, upgrade
    from evoplast.export import RuleStep, data_path, export_rule, load_rule
    from evoplast.genome import build_genome_spec
    from evoplast.runs.artifacts import genome_of_run
    from evoplast.tasks import make_task
    from evoplast.runs.preflight import preflight
    from evoplast.runs.session import RunSession
    from evoplast.runs.tracking import Tracker, resolve_tracking_uri

    # 1. the genome: best_genome.pt of the run, or finetuned_genome.pt of its latest nested fine-tune
    require_store(resolve_tracking_uri(), args.run_id)       # never a new empty mlflow.db
    tracker = Tracker(resolve_tracking_uri())
    run = tracker.get_run(args.run_id)
    genome, source_run = genome_of_run(tracker, args.run_id, args.which)
    cfg = from_dict(upgrade(yaml.safe_load(genome["config_yaml"])))
    preflight(cfg)                       # the same checks as every command, before the file is written
    task = make_task(cfg.task)
    spec = build_genome_spec(cfg, task.n_in, task.n_out, task.kind)
    model = spec.model
    applied = {s.name: {"transform": s.transform, "scale": s.scale} for s in spec.segments
               if s.transform != "identity" or s.scale != 1.0}

    # 2. the file: a pure step function (state, x, y) -> (y_hat, new state), genome tensors as buffers
    out = export_rule(model, genome["segments"], args.out, source_run=source_run, which=args.which,
                      evolution_run=args.run_id, granularity=cfg.rule.granularity, transforms_applied=applied)

    # 3. reload it the way a user will, and check it against evoplast's own step
    step, manifest = load_rule(out)
    reference = RuleStep(model, genome["segments"])
    inputs = reference.example_inputs(n=3, m=5)
    for a, b in zip(step(*inputs), reference(*inputs)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    print(f"Wrote {out} ({out.stat().st_size / 1024:.0f} KiB) and {data_path(out)} (the same rule as data): "
          f"rule '{manifest['rule']}', layers {manifest['sizes']}, "
          f"plastic {manifest['plastic_layers']}, state of {manifest['state_size']} numbers; "
          f"tensors: {', '.join(manifest['tensors'])}")

    # 4. MLflow: the same rule as a pytorch-flavour model in a nested run, a new registry version whose source
    #    run is the run that produced the genome (the evolution run, or its fine-tune)
    if not args.no_mlflow_model:
        import mlflow

        from evoplast.runs.run_page import child_name, rule_equations, rule_legend
        from evoplast.runs.model_links import export_description, list_version_on_run, register_version, tag_model

        name = args.name or cfg.export.registered_model
        heldout = heldout_of(tracker, genome, source_run)
        score = f"{float(heldout):.4f}" if heldout is not None else "not recorded"
        tags = {"task": cfg.task.name, "rule": manifest["rule"], "source_run": source_run,
                "evolution_run": args.run_id, "which": args.which, "heldout_loss": score}
        # the export's nested run, in a run session like every command's (its lock, its status at the end);
        # MLflow logs a model only into an active run: the session's run is made the active one
        with RunSession(cfg, "export", checks=False) as session:
            session.start(child_name(f"export {args.which}", run.info.run_name or args.run_id[:8]),
                          experiment=tracker.client.get_experiment(run.info.experiment_id).name,
                          parent_run_id=args.run_id, tags={"outer": "export", **tags}, source="scripts/export.py",
                          params={"source_run": source_run, "which": args.which, "rule": manifest["rule"]},
                          system_metrics=False, config_artifact=False)
            mlflow.set_tracking_uri(tracker.uri)
            with mlflow.start_run(run_id=session.run_id) as export_run:
                if heldout is not None:
                    mlflow.log_metric("heldout/loss", float(heldout))
                mlflow.log_artifact(str(out))
                mlflow.log_artifact(str(data_path(out)))            # the same rule as data (safetensors + manifest)
                info = mlflow.models.Model.log(
                    artifact_path=None, name="rule", flavor=_same_file_flavor(out), pytorch_model=reference.eval(),
                    serialization_format="pt2",
                    input_example=tuple(t.numpy() for t in reference.example_inputs(n=2, m=3)),
                    signature=_signature(manifest), pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
            version = register_version(tracker.client, name, info.model_uri, info.model_id, source_run=source_run,
                                       description="", tags=tags).version
            describe_version(tracker, name, version, manifest, genome, cfg, model, source_run, args.run_id,
                             args.which, score=score, experiment_id=run.info.experiment_id)
            recommended = run.data.tags.get("summary.recommended", "best") == args.which
            tag_model(tracker.client, name, version, task=cfg.task.name, rule=manifest["rule"], recommended=recommended)
            list_version_on_run(tracker.client, args.run_id, name, version, args.which)
            tracker.client.set_tag(export_run.info.run_id, "mlflow.note.content", export_description(
                which=args.which, evolution_run=args.run_id, source_run=source_run, experiment_id=run.info.experiment_id,
                name=name, version=version, score=score, file=Path(args.out).name,
                equations=rule_equations(model, genome["segments"]), legend=rule_legend(model)))
            tracker.client.set_tag(export_run.info.run_id, "registered_version", f"{name} v{version}")
            session.finish()
            print(f"MLflow: model {info.model_uri} in run {export_run.info.run_id}, registered as "
                  f"'{name}' version {version}" + (" (alias @recommended)" if recommended else ""))
    print(f"Load it with evoplast (reads it as data, safe for a received file): "
          f"step, manifest = evoplast.export.load_rule('{args.out}'); with PyTorch alone, for a file you trust: "
          f"torch.export.load('{args.out}').module() (docs/safe_rule_files.md)")
    return 0


def heldout_of(tracker, genome: dict, source_run: str):
    """The exported genome's held-out query loss: saved with it (an evolution's best genome), or its fine-tune
    run's latest ``heldout/loss`` (of the genome it kept); None when neither has one."""
    heldout = genome.get("heldout_loss")
    if heldout is None:
        metrics = tracker.get_run(source_run).data.metrics
        losses = [v for k, v in metrics.items() if k.startswith("heldout/loss")]
        heldout = min(losses) if losses else None
    return heldout


def describe_version(tracker, name: str, version, manifest: dict, genome: dict, cfg, model, source_run: str,
                     evolution_run: str, which: str, score: str = "", experiment_id: str = "") -> None:
    """The registered version's description (its held-out score first, the rule written out, links to the runs
    it came from) and tags (task, rule, source run, held-out score)."""
    from evoplast.runs.run_page import rule_equations, rule_legend, run_link

    score = score or (lambda h: f"{float(h):.4f}" if h is not None else "not recorded")(heldout_of(tracker, genome,
                                                                                                   source_run))
    came = (f"the fine-tune {run_link(experiment_id, source_run)} of the evolution run "
            f"{run_link(experiment_id, evolution_run)}" if source_run != evolution_run
            else f"the evolution run {run_link(experiment_id, evolution_run)}")
    text = "\n".join([f"**The {which} {manifest['rule']} rule**, held-out query loss **{score}** (task "
                      f"{cfg.task.name}; layers {manifest['plastic_layers']} of {manifest['sizes']}); from {came}.", "", "```",
                      *rule_equations(model, genome["segments"]), "```", rule_legend(model)])
    client = tracker.client
    client.update_model_version(name, str(version), description=text)
    for key, value in {"task": cfg.task.name, "rule": manifest["rule"], "source_run": source_run,
                       "evolution_run": evolution_run, "which": which, "heldout_loss": score}.items():
        client.set_model_version_tag(name, str(version), key, str(value))


def _same_file_flavor(rule_file: Path):
    """``mlflow.pytorch`` whose saved ``data/model.pt2`` is then replaced by ``rule_file``, the checked file.

    ``mlflow.pytorch.save_model(serialization_format="pt2")`` exports the module again and saves the
    program with its sample inputs, which torch pickles; the registered model must be the same
    pickle-free file as the one written to --out (same program, same buffers).
    """
    import shutil
    from types import SimpleNamespace

    import mlflow.pytorch
    from mlflow.models.model import MLMODEL_FILE_NAME
    from mlflow.utils.file_utils import get_total_file_size

    from evoplast.export import data_path
    from evoplast.safe_pt2 import check_pt2

    def save_model(path, mlflow_model=None, **kwargs):
        mlflow.pytorch.save_model(path=path, mlflow_model=mlflow_model, **kwargs)
        target = Path(path) / "data" / "model.pt2"
        if not target.is_file():
            raise RuntimeError(f"mlflow.pytorch did not write {target}")
        shutil.copyfile(rule_file, target)
        check_pt2(target)
        shutil.copyfile(data_path(rule_file), target.with_name("rule.safetensors"))   # the rule as data
        if mlflow_model is not None:
            mlflow_model.model_size_bytes = get_total_file_size(path)
            mlflow_model.save(str(Path(path) / MLMODEL_FILE_NAME))

    return SimpleNamespace(__name__="mlflow.pytorch", save_model=save_model)


def _signature(manifest):
    """TensorSpec signature (MLflow's pt2 format needs one): -1 marks the dynamic dimensions."""
    import numpy as np
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    f32 = np.dtype(np.float32)
    n_in = manifest["image_size"] ** 2 if manifest.get("features") == "conv" else manifest["sizes"][0]
    n_out, size = manifest["sizes"][-1], manifest["state_size"]
    y = (TensorSpec(np.dtype(np.int64), (-1, -1), "y") if manifest["kind"] == "classification"
         else TensorSpec(f32, (-1, -1, n_out), "y"))
    return ModelSignature(
        inputs=Schema([TensorSpec(f32, (-1, size), "state"), TensorSpec(f32, (-1, -1, n_in), "x"), y]),
        outputs=Schema([TensorSpec(f32, (-1, -1, n_out), "y_hat"), TensorSpec(f32, (-1, size), "new_state")]))


if __name__ == "__main__":
    run_main(main)
