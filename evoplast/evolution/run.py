"""One evolution, start to end: checks, Ray, MLflow, the generation loop, checkpoints, the final report.

Order matters for the user: everything that can fail for a reason outside the compute (config, MLflow
store or server, Ray address, actor resources, checkpoint to resume) is checked before the first
generation. SIGINT / SIGTERM finish the current generation, write a checkpoint and end the MLflow run
as KILLED; ``--resume`` continues the same run and reaches the same result as an uninterrupted run.
"""

from __future__ import annotations

import json
import signal
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from ..checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ..config import Config, ConfigError, flatten, from_dict, merge_overrides, to_yaml
from ..evaluation import Evaluator
from ..plots import fitness_curve, mse_vs_tasks_seen
from ..tracking import Tracker, environment_params, resolve_tracking_uri
from .placement import Placement, choose, generation_gflop, size
from .trainer import EvolutionTrainer

# Keys that may change when a run is resumed; anything else would make it a different experiment.
RESUMABLE_KEYS = ("search.generations", "ray.", "tracking.gain_every", "checkpoint.every", "device")


@dataclass
class EvolutionResult:
    run_id: str
    status: str                       # FINISHED or KILLED
    generations: int
    center: torch.Tensor              # [D] the recommended genome
    report: dict[str, Any]            # held-out report of the center (see Evaluator.report)
    history: list[dict[str, float]]
    checkpoint: Path
    ui_command: str
    heldout: list[dict[str, float]] = field(default_factory=list)


def resolve_resume(target: str, cfg_checkpoint_dir: str = "checkpoints") -> tuple[dict[str, Any], Path]:
    """A checkpoint from a path, or from a run id (local ``checkpoints/<id>/latest.pt``, else MLflow)."""
    path = Path(target)
    if path.is_file():
        return load_checkpoint(path), path
    local = Path(cfg_checkpoint_dir) / target / "latest.pt"
    if local.is_file():
        return load_checkpoint(local), local
    if "/" in target or target.endswith(".pt"):
        raise CheckpointError(f"checkpoint {target!r} does not exist")
    tracker = Tracker(resolve_tracking_uri())
    tracker.get_run(target)
    tmp = Path(tempfile.mkdtemp(prefix="evoplast-resume-"))
    try:
        file = tracker.client.download_artifacts(target, "checkpoint/latest.pt", str(tmp))
    except Exception:
        raise CheckpointError(f"run {target!r} has no checkpoint (neither {str(local)!r} nor an MLflow artifact "
                              f"checkpoint/latest.pt)") from None
    return load_checkpoint(file), Path(file)


def resume_config(checkpoint: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> Config:
    """The checkpoint's config with the overrides that a resume allows (e.g. more generations)."""
    import yaml

    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if not any(key == k or (k.endswith(".") and key.startswith(k)) for k in RESUMABLE_KEYS):
            raise ConfigError(f"{key} cannot change when resuming (only {', '.join(RESUMABLE_KEYS)} can); "
                              f"start a new run instead")
    return from_dict(merge_overrides(yaml.safe_load(checkpoint["config_yaml"]), overrides))


class _StopFlag:
    """SIGINT/SIGTERM -> finish the generation, checkpoint, stop. A second SIGINT interrupts at once."""

    def __init__(self):
        self.signal: Optional[int] = None
        self._old: dict[int, Any] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


def _format_stats(s: dict[str, float], total: int) -> str:
    return (f"gen {s['generation'] + 1:4d}/{total} | best {s['best']:8.3f}  mean {s['mean']:8.3f}  "
            f"median {s['median']:8.3f} | step {s['stepsize']:.3g} | {s['evals_per_s']:7.1f} evals/s "
            f"({s['lifetimes_per_s']:.0f} lifetimes/s) | non-finite {int(s['nonfinite'])}")


def run_evolution(cfg: Config, *, resume: Optional[dict[str, Any]] = None,
                  out: Callable[[str], None] = print, print_every: int = 1,
                  stop_after: Optional[int] = None) -> EvolutionResult:
    """Run (or resume) an evolution as configured.

    Args:
        cfg: the resolved config.
        resume: a checkpoint dict (:func:`resolve_resume`) to continue from, or None.
        out: where progress lines go.
        print_every: print one line every N generations.
        stop_after: stop (as if interrupted: checkpoint, KILLED) after this many generations in
            total; for tests and for splitting a run into pieces.
    """
    # ---- checks before any compute: tracking store, Ray and its actors; only then an MLflow run ----
    tracker = Tracker(resolve_tracking_uri(cfg.tracking.tracking_uri))
    if resume is not None:
        tracker.get_run(resume["mlflow_run_id"])
    # where to evaluate (placement.py); the driver's evaluator (held-out reports, in-process fitness) is
    # built first: on a CPU it builds the fused kernel, once, before any actor starts and loads it
    evaluator = Evaluator(cfg, "cpu")
    placement = choose(cfg, gflop=generation_gflop(cfg, evaluator.spec.model.sizes), cuda=torch.cuda.is_available())
    if placement.where == "in-process" and placement.device != "cpu":
        evaluator = Evaluator(cfg, placement.device, spec=evaluator.spec)
    evaluate, pool, placement = _make_evaluate(cfg, placement, tracker, evaluator, out)
    status = "FAILED"
    threads = torch.get_num_threads()
    if placement.threads and placement.device == "cpu":
        torch.set_num_threads(placement.threads)      # restored when the run ends
    try:
        if resume is not None:
            tracker.resume_run(resume["mlflow_run_id"])
        else:
            tracker.start_run(cfg.tracking.experiment, cfg.tracking.run_name)
            tracker.log_params({**flatten(cfg), **environment_params()})
            tracker.log_params(placement.params())
            with tempfile.TemporaryDirectory() as tmp:
                (Path(tmp) / "config.yaml").write_text(to_yaml(cfg))
                tracker.log_artifact(Path(tmp) / "config.yaml")
        if resume is not None:   # a resumed run may be placed elsewhere: its params stay the first placement's
            tracker.set_tags({f"evoplast.placement.resumed.{resume['trainer']['generation']}":
                              json.dumps(placement.params())})
        if pool is not None:   # where each slice is evaluated; replacements update their actor's tag
            tracker.set_tags({f"evoplast.actor.{i}": _actor_tag(info) for i, info in enumerate(pool.actor_info)})
            fallbacks = {i: info["fallback"] for i, info in enumerate(pool.actor_info) if info.get("fallback")}
            if fallbacks:
                tracker.set_tags({"evoplast.gpu_fallback": json.dumps(fallbacks)})
        center0 = evaluator.spec.initial_vector()
        out(f"evoplast: run {tracker.run_id} | genome of {evaluator.spec.dim} numbers "
            f"({', '.join(s.name for s in evaluator.spec.evolved)[:90]}...) | {cfg.search.algorithm} "
            f"popsize {cfg.search.popsize} | {cfg.evaluation.episodes} episodes/genome | "
            f"{placement.describe()}")
        if pool is not None:
            for i, info in enumerate(pool.actor_info):
                if info.get("fallback"):
                    out(f"evoplast: actor {i} (node {info['node_id'][:8]}): CPU fallback: {info['fallback']} "
                        f"(MLflow tag evoplast.gpu_fallback)")
        trainer = EvolutionTrainer(cfg, evaluate, center0, recipes=pool is not None)
        heldout: list[dict[str, float]] = []
        if resume is not None:
            trainer.load_state_dict(resume["trainer"])
            heldout = [dict(h) for h in resume.get("heldout", [])]
            out(f"evoplast: resumed at generation {trainer.generation}")
        ckpt_path = Path(cfg.checkpoint.dir) / tracker.run_id / "latest.pt"

        def checkpoint(log_artifact: bool = True) -> Path:
            tracker.flush()
            save_checkpoint(ckpt_path, {"config_yaml": to_yaml(cfg), "mlflow_run_id": tracker.run_id,
                                        "trainer": trainer.state_dict(), "heldout": heldout})
            if log_artifact:
                tracker.log_artifact(ckpt_path, "checkpoint")
            return ckpt_path

        total = cfg.search.generations
        last = min(total, stop_after) if stop_after is not None else total
        with _StopFlag() as stop:
            while trainer.generation < last and stop.signal is None:
                try:
                    stats = trainer.step()
                except Exception as exc:
                    from .ray_pool import ActorsLost

                    if not isinstance(exc, ActorsLost):
                        raise
                    # a half-done generation is never checkpointed; the last whole one is resumable
                    where = (f"the last checkpoint is {ckpt_path} (generation {load_checkpoint(ckpt_path)['trainer']['generation']}); "
                             f"continue with --resume {tracker.run_id}" if ckpt_path.is_file()
                             else "no checkpoint was written yet; start the run again")
                    raise ActorsLost(f"{exc}; {where}") from None
                g = trainer.generation
                tracker.log_metrics({f"fitness.{k}": stats[k] for k in ("best", "mean", "median", "worst")
                                     if stats[k] == stats[k]} |
                                    {k: stats[k] for k in ("stepsize", "evals_per_s", "lifetimes_per_s",
                                                           "nonfinite")} | {"generation_seconds": stats["seconds"]},
                                    step=g)
                if print_every and (g % print_every == 0 or g == last):
                    out(_format_stats(stats, total))
                if g % cfg.tracking.gain_every == 0 or g == total:
                    h = evaluator.learning_measures(trainer.center())
                    heldout.append({"generation": g, **h})
                    tracker.log_metrics({f"heldout.{k}": v for k, v in h.items()}, step=g)
                    metric = "MSE" if evaluator.task.kind == "regression" else "cross-entropy"
                    out(f"          held-out {metric} {h['loss']:.3f} | plasticity off {h['loss_plasticity_off']:.3f} "
                        f"(learning gain {h['learning_gain']:+.3f}) | episode-specific gain {h['episode_gain']:+.3f}")
                if g % cfg.checkpoint.every == 0 and g < total:
                    checkpoint()
            if trainer.generation < total:  # interrupted (signal or stop_after)
                path = checkpoint()
                why = signal.Signals(stop.signal).name if stop.signal is not None else "stop_after"
                tracker.set_tags({"evoplast.stopped_by": why})
                out(f"evoplast: stopped at generation {trainer.generation} ({why}); checkpoint {path}; "
                    f"continue with --resume {tracker.run_id}")
                status = "KILLED"
                return EvolutionResult(tracker.run_id, status, trainer.generation, trainer.center(), {},
                                       trainer.history, path, tracker.ui_command(), heldout)
        # ---- the end: report, artifacts ----
        center = trainer.center()
        report = evaluator.report(center)
        path = checkpoint(log_artifact=True)
        _log_final_artifacts(tracker, cfg, evaluator, trainer, center, report, heldout)
        tracker.log_metrics({f"final.{k}": v for k, v in report.items() if isinstance(v, float)},
                            step=trainer.generation)
        status = "FINISHED"
        return EvolutionResult(tracker.run_id, status, trainer.generation, center, report, trainer.history,
                               path, tracker.ui_command(), heldout)
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        torch.set_num_threads(threads)
        if pool is not None:
            pool.shutdown()
        if tracker.run_id is not None:
            tracker.end(status)


def _make_evaluate(cfg: Config, placement: Placement, tracker: Tracker, evaluator: Evaluator,
                   out: Callable[[str], None]):
    """``(evaluate, pool, placement)``: in-process, a Ray pool, or (distributed) EvoTorch's own actors.
    On a cluster the placement is completed from its nodes (:func:`~evoplast.evolution.placement.size`)."""
    if placement.where == "in-process":
        return evaluator.fitness, None, placement
    from dataclasses import replace

    import ray

    from .ray_pool import RayPool, RayUnavailable, init_ray

    init_ray(replace(cfg.ray, address=placement.address))
    if placement.where == "cluster":
        try:
            placement = size(placement, ray.nodes(), cpus_per_gpu_actor=cfg.ray.num_cpus_per_actor)
        except ValueError as exc:
            raise RayUnavailable(f"{exc} (cluster {placement.address})") from None
    if cfg.search.distributed:
        return None, None, placement

    def on_event(kind: str, details: dict) -> None:
        # one tag per event: evoplast.event.<kind>.<generation>.<actor>.<retry> = the details as JSON
        tags = {f"evoplast.event.{kind}.{details.get('generation')}.{details.get('actor')}.{details.get('retry', 0)}":
                json.dumps(details, default=str)}
        if kind == "actor_replaced":
            tags[f"evoplast.actor.{details.get('actor')}"] = _actor_tag(details)
        tracker.set_tags(tags)
        print(f"evoplast: {kind.replace('_', ' ')}: {details}")

    pool = RayPool(placement.apply(cfg), on_event=on_event, progress=out)
    return pool.evaluate, pool, placement


def _actor_tag(info: dict) -> str:
    """MLflow tag value of one evaluator actor: ``{"node_id": ..., "device": ..., "pid": ...}`` as JSON."""
    return json.dumps({k: info.get(k) for k in ("node_id", "device", "pid")} |
                      ({"fallback": info["fallback"]} if info.get("fallback") else {}))


def _log_final_artifacts(tracker: Tracker, cfg: Config, evaluator: Evaluator, trainer: EvolutionTrainer,
                         center: torch.Tensor, report: dict[str, Any], heldout: list[dict[str, float]]) -> None:
    with tempfile.TemporaryDirectory(prefix="evoplast-artifacts-") as tmp:
        d = Path(tmp)
        genomes, fitness = trainer.population()
        values = evaluator.spec.decode(center.to(torch.float32))
        torch.save({"format": "evoplast.genome", "version": 1, "genome": center,
                    "segments": {k: v.contiguous() for k, v in values.items()},
                    "config_yaml": to_yaml(cfg), "generation": trainer.generation,
                    "heldout_loss": report["loss"]}, d / "best_genome.pt")
        torch.save({"format": "evoplast.population", "version": 1, "genomes": genomes, "fitness": fitness,
                    "center": center, "config_yaml": to_yaml(cfg)}, d / "population.pt")
        fitness_curve(trainer.history, d / "fitness_curve.png", heldout)
        mse_vs_tasks_seen({"evolved rule (best genome)": report["curve"],
                           "online SGD, same initial weights": report["curve_sgd_same_init"],
                           "online SGD, seed's initial weights": report["curve_sgd_seed_init"]},
                          d / "mse_vs_tasks_seen.png",
                          title=f"held-out episodes, {cfg.task.order} stream")
        for name in ("best_genome.pt", "population.pt", "fitness_curve.png", "mse_vs_tasks_seen.png"):
            tracker.log_artifact(d / name)
        import json

        (d / "report.json").write_text(json.dumps(report, indent=1))
        tracker.log_artifact(d / "report.json")
