"""One evolution, start to end: checks, Ray, MLflow, the generation loop, checkpoints, the final report.

Order matters for the user: everything that can fail for a reason outside the compute (config, MLflow
store or server, Ray address, actor resources, checkpoint to resume) is checked before the first
generation. SIGINT / SIGTERM finish the current generation, write a checkpoint and end the MLflow run
as KILLED; ``--resume`` continues the same run and reaches the same result as an uninterrupted run.
"""

from __future__ import annotations

import json
import re
import signal
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from .session import SCRIPTS, RunSession, command_of, resume_config  # noqa: F401 (resume_config: evolve.py --resume)
from .signals import Interrupted
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ..config import Config, flatten, to_yaml
from ..evaluation import Evaluator
from .run_page import (BASELINES, applicable_params, baseline_lines, evolution_description, headline,
                        headline_metrics, learner_curves, rule_equations, rule_legend, run_name, run_tags,
                        summary_table)
from .plots import fitness_curve, mse_vs_tasks_seen
from .progress import LineStream, Progress, quiet_libraries
from .artifacts import genome_record
from .guards import WriteFailed, write_failed
from .tracking import Tracker, TrackingUnavailable, resolve_tracking_uri
from ..parallel.placement import Placement, choose, generation_gflop, size
from ..parallel.ray_pool import speed_metrics, speed_note
from ..trainers.loop import BaseCallback, run_outer
from ..trainers.es import ESTrainer
from ..science import report as science_report


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
    stopped_by: str = ""              # "SIGINT" / "SIGTERM" when a signal stopped it
    trainer: Any = None               # the ESTrainer, in the state of the last generation done


def resolve_resume(target: str, cfg_checkpoint_dir: str = "checkpoints",
                   out: Callable[[str], None] = print) -> tuple[dict[str, Any], str]:
    """A checkpoint from a path, or from a run id (local ``checkpoints/<id>/latest.pt``, else MLflow).

    A local file that cannot be used (truncated at any length, corrupt, unreadable, or holding the wrong
    types) falls back to the copy in the run's MLflow artifacts (``checkpoint/latest.pt``; the run id is the
    file's folder name) and says so through ``out``. Returns ``(checkpoint, where it came
    from)``; nothing is left behind (the MLflow copy is read from a temporary folder that is removed).
    """
    path = Path(target)
    local = path if path.is_file() else Path(cfg_checkpoint_dir) / target / "latest.pt"
    run_id = target if not path.is_file() else path.parent.name
    if local.is_file():
        try:
            data = load_checkpoint(local)
            problem = _payload_problem(data)
            if problem is None or not _RUN_ID.fullmatch(run_id):
                return data, str(local)          # a checkpoint of no run: resume_config says what is wrong
            raise CheckpointError(f"checkpoint {str(local)!r} {problem}")
        except CheckpointError as exc:
            if not _RUN_ID.fullmatch(run_id):
                raise
            out(f"evoplast: {exc}; using the copy in MLflow run {run_id}'s artifacts (checkpoint/latest.pt)")
    elif "/" in target or target.endswith(".pt"):
        raise CheckpointError(f"checkpoint {target!r} does not exist")
    tracker = Tracker(resolve_tracking_uri())
    tracker.get_run(run_id)
    with tempfile.TemporaryDirectory(prefix="evoplast-resume-") as tmp:
        try:
            file = tracker.client.download_artifacts(run_id, "checkpoint/latest.pt", tmp)
        except TrackingUnavailable:
            raise
        except Exception:
            raise CheckpointError(f"run {run_id!r} has no checkpoint (neither {str(local)!r} nor an MLflow artifact "
                                  f"checkpoint/latest.pt)") from None
        try:
            data = load_checkpoint(file)
        except CheckpointError as exc:
            raise CheckpointError(f"the MLflow copy of the checkpoint of run {run_id} cannot be used either "
                                  f"({str(exc).split('(', 1)[-1].rstrip(')')})") from None
        problem = _payload_problem(data)
        if problem is not None:
            raise CheckpointError(f"the MLflow copy of the checkpoint of run {run_id} cannot be used either "
                                  f"(it {problem})")
    return data, f"checkpoint/latest.pt of MLflow run {run_id}"


_RUN_ID = re.compile(r"[0-9a-f]{32}")


def _payload_problem(data: dict[str, Any]) -> Optional[str]:
    """What is wrong with a loaded checkpoint's contents (a missing key, a wrong type), or None."""
    command = command_of(data)
    if command != "evolve":             # a train.py (BPTT, PES, hybrid) or fine-tune checkpoint
        return f"is a checkpoint of {SCRIPTS[command]}: resume it with `python {SCRIPTS[command]} --resume <that file>`"
    types = {"config_yaml": str, "mlflow_run_id": str, "trainer": dict}
    missing = [k for k in types if k not in data]
    if missing:
        return f"has no {', '.join(missing)}"
    wrong = [f"{k} is a {type(data[k]).__name__}" for k, t in types.items() if not isinstance(data[k], t)]
    if isinstance(data["trainer"], dict) and not isinstance(data["trainer"].get("generation"), int):
        wrong.append("trainer has no generation")
    return f"holds the wrong types ({', '.join(wrong)})" if wrong else None


def _format_stats(s: dict[str, float], best_so_far: float, heldout: str, speed: str = "") -> dict[str, str]:
    """The values of one progress line (after ``gen   40/1000``): the best fitness so far (it never goes
    down, unlike a generation's best), this generation's median, the latest held-out loss of the center;
    on Ray, where the generation's time went (``speed``: :func:`~evoplast.parallel.ray_pool.speed_note`)."""
    return {"best so far": f"{best_so_far:8.3f}", "median": f"{s['median']:8.3f}", "held-out": heldout,
            "evals/s": f"{s['evals_per_s']:.1f}", "non-finite": f"{int(s['nonfinite'])}"} | (
        {"time": speed} if speed else {})


def metric_row(stats: dict[str, float], best_so_far: float) -> dict[str, float]:
    """One generation's MLflow metrics, grouped by prefix: ``search/`` (the population's fitness on training
    episodes and the search distribution's step size: the evolution's progress), ``speed/``. A NaN (no median
    in some modes) is left out. MLflow's UI orders chart sections by name, so the held-out results
    (``heldout/``, ``learning/``) come before ``search/`` and ``speed/``, and the one-number ``summary/`` last
    (docs/tracking-ux.md). Lifetimes per
    second are not logged: they are evals/s times ``evaluation.episodes`` (one chart per quantity)."""
    row = {f"search/{k}": stats[k] for k in ("best", "mean", "median", "worst")} | {
        "search/best_so_far": best_so_far, "search/nonfinite": stats["nonfinite"],
        "search/stepsize": stats["stepsize"], "speed/evals_per_s": stats["evals_per_s"],
        "speed/generation_seconds": stats["seconds"]}
    return {k: v for k, v in row.items() if v == v and v not in (float("inf"), float("-inf"))}


def run_evolution(cfg: Config, *, resume: Optional[dict[str, Any]] = None,
                  out: Callable[[str], None] = print, print_every: int = 1,
                  stop_after: Optional[int] = None, callbacks: tuple = ()) -> EvolutionResult:
    """Run (or resume) an evolution as configured, in a :class:`~evoplast.runs.session.RunSession`.

    Args:
        cfg: the resolved config.
        resume: a checkpoint dict (:func:`resolve_resume`) to continue from, or None.
        out: where progress lines go.
        print_every: print one line every N generations.
        stop_after: stop (as if interrupted: checkpoint, KILLED) after this many generations in
            total; for tests and for splitting a run into pieces.
        callbacks: more :func:`~evoplast.trainers.loop.run_outer` callbacks, after the run's own.

    Faults: a signal anywhere (set-up, loop, report) ends as KILLED with a checkpoint of the finished
    generations and the resume command; a tracking store that stops answering ends with a local checkpoint,
    the exact resume command and :class:`TrackingUnavailable` (exit 1); a checkpoint that does not fit is
    refused before its run is touched.
    """
    # ---- checks before anything starts (preflight: memory, checkpoint folder, device, data) ----
    with RunSession(cfg, "evolve", out=out) as session:
        try:
            return _run(session, resume, out, print_every, stop_after, callbacks)
        except Interrupted as exc:
            if not getattr(exc, "reported", False):
                where = (f"run {resume['mlflow_run_id']} is left as it was" if resume is not None and
                         "mlflow_run_id" in resume else "no MLflow run was started")
                out(f"evoplast: interrupted by {signal.Signals(exc.signum).name} during set-up; {where}")
            raise


def _run(session: RunSession, resume: Optional[dict[str, Any]], out: Callable[[str], None], print_every: int,
         stop_after: Optional[int], callbacks: tuple) -> EvolutionResult:
    # ---- checks before any compute: tracking store, Ray and its actors; only then an MLflow run ----
    quiet_libraries()
    cfg, tracker, stop = session.cfg, session.tracker, session.stop
    out(f"evoplast: setting up ({'resuming run ' + str(resume.get('mlflow_run_id')) if resume is not None else 'a new run'}, "
        f"tracking in {tracker.shown_uri})")
    if resume is not None:
        if "mlflow_run_id" not in resume or "trainer" not in resume:
            raise CheckpointError("the checkpoint has no mlflow_run_id or trainer: it cannot be resumed")
        problem = _payload_problem(resume)
        if problem is not None:
            raise CheckpointError(f"the checkpoint {problem}: it cannot be resumed (start a new run)")
        # one writer per run (a second --resume is refused); then nested runs a dead process left RUNNING are
        # ended; a FINISHED run is resumed only for more generations
        session.claim(resume, total=cfg.search.generations, done=int(resume["trainer"].get("generation", 0)))
    # where to evaluate (placement.py); the driver's evaluator (held-out reports, in-process fitness) is
    # built first: on a CPU it builds the fused kernel, once, before any actor starts and loads it
    evaluator = Evaluator(cfg, "cpu")
    placement = choose(cfg, gflop=generation_gflop(cfg, evaluator.spec.model.sizes), cuda=torch.cuda.is_available())
    if placement.where == "in-process" and placement.device != "cpu":
        evaluator = Evaluator(cfg, placement.device, spec=evaluator.spec)
    evaluate, pool, placement = _make_evaluate(cfg, placement, tracker, evaluator, out)
    stop.reinstall()
    threads = torch.get_num_threads()
    if placement.threads and placement.device == "cpu":
        torch.set_num_threads(placement.threads)      # restored when the run ends
    status: Optional[str] = None           # the run's status at the end; None: leave the run as it was
    trainer: Optional[ESTrainer] = None
    heldout: list[dict[str, float]] = []
    ckpt_path: Optional[Path] = None
    generations: Optional[Generations] = None     # its in_step: a generation is half done (not checkpointed)

    def checkpoint(log: bool = True) -> Path:
        """Write the trainer's state; with ``log``, first the queued metrics, then the MLflow copy.
        Metrics that could not be written are kept in the checkpoint and written when it is resumed."""
        lost = None
        if log:
            try:
                tracker.flush()
            except TrackingUnavailable as exc:
                lost = exc
        try:
            save_checkpoint(ckpt_path, session.checkpoint_extra(
                outer="es", step=trainer.generation, steps=cfg.search.generations, trainer=trainer.state_dict(),
                heldout=heldout, pending_metrics=tracker.pending_metrics()))
        except OSError as exc:          # a full disk, a vanished folder: the previous checkpoint is intact
            raise write_failed(exc, f"the checkpoint {ckpt_path} at generation {trainer.generation}", _kept(ckpt_path),
                               f"python scripts/evolve.py --resume {tracker.run_id}") from None
        if lost is not None:
            raise lost
        if log:
            tracker.log_artifact(ckpt_path, "checkpoint")
        return ckpt_path

    try:
        center0 = evaluator.spec.initial_vector()
        trainer = ESTrainer(cfg, center0, evaluate, recipes=pool is not None)
        if resume is not None:          # the state must fit before the run is touched
            try:
                trainer.load_state_dict(resume["trainer"])
                heldout = [dict(h) for h in resume.get("heldout", [])]
            except Exception as exc:
                raise CheckpointError(f"the checkpoint of run {resume['mlflow_run_id']} does not fit its config "
                                      f"({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}); "
                                      f"the run is left as it was") from None
            session.reopen()
            status = "FAILED"
            tracker.restore_pending_metrics(resume.get("pending_metrics", []))
        else:
            flat = flatten(cfg)
            status = "FAILED"
            session.start(run_name(flat), tags=run_tags(flat, "es"), source="scripts/evolve.py",
                          params={**applicable_params(flat, ray=placement.where != "in-process",
                                                      gpu=placement.device != "cpu" or bool(placement.num_gpus_per_actor),
                                                      command="evolve"), **placement_params(placement)})
        ckpt_path = Path(cfg.checkpoint.dir) / tracker.run_id / "latest.pt"
        if resume is not None:   # a resumed run may be placed elsewhere: its params stay the first placement's
            tracker.set_tags({f"evoplast.placement.resumed.{resume['trainer']['generation']}":
                              json.dumps(placement.params())})
        if pool is not None:   # where each slice is evaluated; replacements update their actor's tag
            tracker.set_tags({f"evoplast.actor.{i}": _actor_tag(info) for i, info in enumerate(pool.actor_info)})
            fallbacks = {i: info["fallback"] for i, info in enumerate(pool.actor_info) if info.get("fallback")}
            if fallbacks:
                tracker.set_tags({"evoplast.gpu_fallback": json.dumps(fallbacks)})
        out(f"evoplast: run {tracker.run_id} | genome of {evaluator.spec.dim} numbers "
            f"({', '.join(s.name for s in evaluator.spec.evolved)[:90]}...) | {cfg.search.algorithm} "
            f"popsize {cfg.search.popsize} | {cfg.evaluation.episodes} episodes/genome | "
            f"{placement.describe()}")
        if pool is not None:
            for i, info in enumerate(pool.actor_info):
                if info.get("fallback"):
                    out(f"evoplast: actor {i} (node {info['node_id'][:8]}): CPU fallback: {info['fallback']} "
                        f"(MLflow tag evoplast.gpu_fallback)")
        if resume is not None:
            out(f"evoplast: resumed at generation {trainer.generation}")

        if resume is not None:
            tracker.start_system_metrics()
        total = cfg.search.generations
        last = min(total, stop_after) if stop_after is not None else total
        stream = None if out is print else LineStream(out)
        progress = Progress(total, "gen", stream=stream, every=print_every or total + 1, start=trainer.generation)
        best_so_far = max((h["best"] for h in trainer.history if h["best"] == h["best"]), default=float("-inf"))
        if resume is None:              # the "before" point (step 0) of the held-out curves
            h = evaluator.learning_measures(center0)
            heldout.append({"generation": 0, **h})
            tracker.log_metrics(heldout_metrics(h), step=0)
        latest = f"{heldout[-1]['loss']:.3f}" if heldout else "-"

        generations = Generations(trainer, ckpt_path, tracker.run_id)
        # a signal lets the generation in flight finish (run_outer); the report below stops at once
        report_cb = GenerationReport(cfg, tracker, evaluator, trainer, heldout, progress, checkpoint, pool=pool,
                                     total=total, last=last, print_every=print_every, best_so_far=best_so_far,
                                     latest=latest)
        run_outer(generations, steps=last, start=trainer.generation, callbacks=[report_cb, *callbacks], stop=stop)
        progress.close()
        stop.immediate = True           # the report stops at once: the finished generations are saved first
        if trainer.generation < total or stop.signal is not None:   # interrupted (signal or stop_after)
            raise Interrupted(stop.signal) if stop.signal is not None else _StopAfter()
        # ---- the end: the state of the last generation is safe, then the report and artifacts ----
        path = checkpoint()
        center = trainer.center()
        report = science_report.report(evaluator, center)
        _log_final_artifacts(tracker, cfg, evaluator, trainer, center, report, heldout)
        status = "FINISHED"
        return EvolutionResult(tracker.run_id, status, trainer.generation, center, report, trainer.history,
                               path, tracker.ui_command(), heldout, trainer=trainer)
    except (Interrupted, _StopAfter) as exc:
        stop.immediate = False          # the clean-up itself is not cut short by a further SIGTERM
        why = signal.Signals(exc.signum).name if isinstance(exc, Interrupted) else "stop_after"
        if status is None:              # no run was started or touched: run_evolution says so
            raise
        status = "KILLED"
        if generations is not None and generations.in_step:   # a second Ctrl-C inside a generation: half-updated
            path = ckpt_path
            out(f"evoplast: interrupted by {why} inside generation {trainer.generation + 1}; "
                + (f"the last checkpoint is {ckpt_path} (generation {load_checkpoint(ckpt_path)['trainer']['generation']}); "
                   f"continue with --resume {tracker.run_id}" if ckpt_path.is_file() else "no checkpoint was written"))
        else:
            try:
                path = checkpoint()
                tracker.set_tags({"evoplast.stopped_by": why})
            except TrackingUnavailable as lost:       # saved here all the same; the status may not be set
                path = ckpt_path
                tracker.lost = True
                out(f"evoplast: {lost}")
            out(f"evoplast: stopped at generation {trainer.generation} ({why}); checkpoint {path}; "
                f"continue with --resume {tracker.run_id}")
        return EvolutionResult(tracker.run_id, status, trainer.generation, trainer.center(), {},
                               trainer.history, path, tracker.ui_command(), heldout,
                               stopped_by=why if why != "stop_after" else "", trainer=trainer)
    except WriteFailed:
        if status is not None:
            status = "FAILED"
        raise
    except OSError as exc:              # an artifact (a plot, a genome file) could not be written
        if status is None or ckpt_path is None:
            raise
        status = "FAILED"
        raise write_failed(exc, f"an artifact of run {tracker.run_id}", _kept(ckpt_path),
                           f"python scripts/evolve.py --resume {tracker.run_id}") from None
    except TrackingUnavailable as exc:
        in_step = generations is not None and generations.in_step
        if status is None or trainer is None or ckpt_path is None or in_step:
            raise
        # the store stopped answering: keep the work here, say how to continue, end non-zero
        status = "KILLED"
        try:
            path = checkpoint(log=False)
        except WriteFailed as failed:   # a full disk fails the store and the checkpoint alike
            tracker.lost = True
            raise WriteFailed(f"{exc}; {failed}") from None
        tracker.lost = True
        raise TrackingUnavailable(f"{exc}; the run's state at generation {trainer.generation} is saved in {path}; "
                                  f"when the store answers again, continue with "
                                  f"`python scripts/evolve.py --resume {path}`") from None
    except KeyboardInterrupt:
        status = "KILLED" if status is not None else None
        raise
    finally:
        torch.set_num_threads(threads)
        if pool is not None:
            pool.shutdown()
        # the session ends the MLflow run with this status (None: the run is left as it was)
        session.status = status
        session.started = session.started and status is not None


class Generations:
    """The ES trainer's step for :func:`~evoplast.trainers.loop.run_outer` in an evolution run: marks a generation
    in flight (``in_step``: its state is half-updated and is never checkpointed), and says where to resume when
    the Ray actors are lost."""

    def __init__(self, trainer: ESTrainer, ckpt_path: Path, run_id: str):
        self.trainer, self.ckpt_path, self.run_id = trainer, ckpt_path, run_id
        self.in_step = False

    def step(self) -> dict[str, float]:
        try:
            self.in_step = True
            stats = self.trainer.step()
            self.in_step = False
        except Exception as exc:
            from ..parallel.ray_pool import ActorsLost

            if not isinstance(exc, ActorsLost):
                raise
            # a half-done generation is never checkpointed; the last whole one is resumable
            path = self.ckpt_path
            where = (f"the last checkpoint is {path} (generation {load_checkpoint(path)['trainer']['generation']}); "
                     f"continue with --resume {self.run_id}" if path.is_file()
                     else "no checkpoint was written yet; start the run again")
            raise ActorsLost(f"{exc}; {where}") from None
        return stats


class GenerationReport(BaseCallback):
    """What each generation of an evolution run leaves behind (a :func:`~evoplast.trainers.loop.run_outer`
    callback): its ``search/`` and ``speed/`` metrics, the search center's held-out loss (the learning measures
    every ``tracking.gain_every`` generations and at the last, the loss alone :data:`CURVE_POINTS` times per run),
    the progress line and a checkpoint every ``checkpoint.every`` generations.

    Args:
        cfg, tracker, evaluator, trainer: the run's config, MLflow tracker, driver-side evaluator, ESTrainer.
        heldout: the run's held-out rows (appended to; a checkpoint saves them).
        progress: the run's :class:`~evoplast.runs.progress.Progress` line.
        checkpoint: ``() -> path``: writes the run's checkpoint.
        pool: the Ray pool (its timings become ``speed/`` metrics), or None in-process.
        total, last: the run's generations, and the last one this call runs (``stop_after``).
        print_every: a progress line every N generations (0: none).
        best_so_far, latest: the best fitness and the latest held-out loss so far (a resumed run's).
    """

    def __init__(self, cfg: Config, tracker: Tracker, evaluator: Evaluator, trainer: ESTrainer,
                 heldout: list[dict[str, float]], progress: Progress, checkpoint: Callable[[], Path], *, pool=None,
                 total: int, last: int, print_every: int, best_so_far: float, latest: str):
        self.cfg, self.tracker, self.evaluator, self.trainer = cfg, tracker, evaluator, trainer
        self.heldout, self.progress, self.checkpoint, self.pool = heldout, progress, checkpoint, pool
        self.total, self.last, self.print_every = total, last, print_every
        self.best_so_far, self.latest = best_so_far, latest
        self.curve_every = heldout_curve_every(total)

    def on_step(self, g, stats, _):
        cfg, tracker, evaluator, trainer, heldout = self.cfg, self.tracker, self.evaluator, self.trainer, self.heldout
        if stats["best"] == stats["best"]:
            self.best_so_far = max(self.best_so_far, stats["best"])
        timing = self.pool.last_timing if self.pool is not None else {}
        tracker.log_metrics(metric_row(stats, self.best_so_far)
                            | speed_metrics(timing, stats["seconds"], trainer.problem.sample_seconds), step=g)
        if g % cfg.tracking.gain_every == 0 or g == self.total:
            h = evaluator.learning_measures(trainer.center())
            heldout.append({"generation": g, **h})
            tracker.log_metrics(heldout_metrics(h), step=g)
            self.latest = f"{h['loss']:.3f}"
        elif g % self.curve_every == 0:     # the loss alone between: a curve for ~5% of the time
            loss = float(evaluator.score(trainer.center().reshape(1, -1)).loss[0])
            heldout.append({"generation": g, "loss": loss})
            tracker.log_metrics({"heldout/loss": loss}, step=g)
            self.latest = f"{loss:.3f}"
        if self.print_every:
            self.progress.update(g, _format_stats(stats, self.best_so_far, self.latest,
                                                  speed_note(timing, stats["seconds"])), last=self.last)
        if heldout and heldout[-1]["generation"] == g and self.print_every and "learning_gain" in heldout[-1]:
            h = heldout[-1]
            metric = "MSE" if evaluator.task.kind == "regression" else "cross-entropy"
            self.progress.note(f"          held-out {metric} of the search center {h['loss']:.3f} | plasticity off "
                               f"{h['loss_plasticity_off']:.3f} (learning gain {h['learning_gain']:+.3f}) | "
                               f"episode-specific gain {h['episode_gain']:+.3f}")
        if g % cfg.checkpoint.every == 0 and g < self.total:
            self.checkpoint()


def _kept(ckpt_path: Path) -> str:
    """What a failed write leaves: the last checkpoint (and its generation), or none."""
    try:
        return f"the last checkpoint {ckpt_path} (generation {load_checkpoint(ckpt_path)['trainer']['generation']}) is intact"
    except (CheckpointError, KeyError, TypeError):
        return "no checkpoint was written before"


class _StopAfter(Exception):
    """``stop_after`` generations are done: stop as if interrupted."""


def _make_evaluate(cfg: Config, placement: Placement, tracker: Tracker, evaluator: Evaluator,
                   out: Callable[[str], None]):
    """``(evaluate, pool, placement)``: in-process or a Ray pool.
    On a cluster the placement is completed from its nodes (:func:`~evoplast.parallel.placement.size`)."""
    if placement.where == "in-process":
        return evaluator.fitness, None, placement
    import ray

    from ..parallel.ray_pool import RayPool, RayUnavailable, init_ray

    init_ray(cfg.ray.replace(address=placement.address))
    if placement.where == "cluster":
        try:
            placement = size(placement, ray.nodes(), cpus_per_gpu_actor=cfg.ray.num_cpus_per_actor)
        except ValueError as exc:
            raise RayUnavailable(f"{exc} (cluster {placement.address})") from None

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


def _log_final_artifacts(tracker: Tracker, cfg: Config, evaluator: Evaluator, trainer: ESTrainer,
                         center: torch.Tensor, report: dict[str, Any], heldout: list[dict[str, float]]) -> None:
    """Genome files, plots (``log_figure``), the held-out table (``log_table``), ``report.json`` (``log_dict``),
    baselines as reference lines beside ``heldout/loss``, and the run's description."""
    with tempfile.TemporaryDirectory(prefix="evoplast-artifacts-") as tmp:
        d = Path(tmp)
        genomes, fitness = trainer.population()
        torch.save(genome_record(center, evaluator.spec, cfg, trainer.generation, report["loss"]),
                   d / "best_genome.pt")
        torch.save({"format": "evoplast.population", "version": 1, "genomes": genomes, "fitness": fitness,
                    "center": center, "config_yaml": to_yaml(cfg)}, d / "population.pt")
        for name in ("best_genome.pt", "population.pt"):
            tracker.log_artifact(d / name)
    # a FINISHED run continued on purpose (more generations) keeps its first tuned rates as params (MLflow
    # params cannot change); report.json holds the new ones
    logged = tracker.get_run(tracker.run_id).data.params
    tracker.log_params({f"tuned_lr.{k[:-3]}": v for k, v in report.items()
                        if k.endswith("_lr") and f"tuned_lr.{k[:-3]}" not in logged})
    baselines = baseline_lines(report)
    tracker.log_figure(fitness_curve(trainer.history, heldout, baselines={BASELINES[k]: v for k, v in baselines.items()}),
                       "fitness_curve.png")
    tracker.log_figure(mse_vs_tasks_seen(learner_curves(report), title=f"held-out episodes, {cfg.task.order} stream",
                                         ylabel="query MSE" if evaluator.task.kind == "regression"
                                         else "query cross-entropy"), "mse_vs_tasks_seen.png")
    tracker.log_dict(report, "report.json")
    tracker.log_table(summary_table(report), "heldout_summary.json")
    for key, value in baselines.items():   # a flat line over the run in heldout/loss's section (two points);
        if key == "loss_plasticity_off":    # not this one: heldout/loss_plasticity_off is its curve already
            continue
        tracker.log_metrics({f"heldout/loss_baseline_{key}": value}, step=0)
        tracker.log_metrics({f"heldout/loss_baseline_{key}": value}, step=trainer.generation)
    if not cfg.finetune.after_evolution:     # else once the fine-tune is known (add_finetune_to_description)
        head = headline(report)
        tracker.log_metrics(headline_metrics(head), step=trainer.generation)
        tracker.set_tags(headline_tags(head))
    tracker.flush()
    describe_run(tracker, cfg, evaluator, trainer.generation, report, trainer.history,
                 evaluator.spec.decode(center.to(torch.float32)))


def describe_run(tracker: Tracker, cfg: Config, evaluator: Evaluator, generations: int, report: dict[str, Any],
                 history, segments, finetune: Optional[dict[str, Any]] = None) -> None:
    """Write (or rewrite, once the fine-tune is known) the run's description: the rule, the table, next steps."""
    tracker.set_description(evolution_description(
        run_id=tracker.run_id, flat=flatten(cfg), generations=generations, report=report,
        equations=rule_equations(evaluator.spec.model, segments), legend=rule_legend(evaluator.spec.model),
        history=history, finetune=finetune, uri=tracker.shown_uri, experiment_id=tracker.experiment_id))


def heldout_metrics(h: dict[str, float]) -> dict[str, float]:
    """MLflow names of :meth:`~evoplast.evaluation.Evaluator.learning_measures`: the losses in ``heldout/`` (the
    UI's first chart section, ``heldout/loss`` its first chart, the baselines' ``heldout/loss_baseline_*``
    beside it), the gains in ``learning/`` (``learning/gain``, ``learning/episode_gain``)."""
    names = {"learning_gain": "learning/gain", "episode_gain": "learning/episode_gain"}
    return {names.get(k, f"heldout/{k}"): v for k, v in h.items()}


CURVE_POINTS = 20    # held-out losses of the search center per run, besides step 0 (the "before" point)


def heldout_curve_every(generations: int) -> int:
    """Generations between two held-out losses of the search center: :data:`CURVE_POINTS` per run. One costs
    about half a generation (one batched lifetime over the held-out episodes, no baselines), so ~20 of them
    cost ~4% of a 250-generation run (docs/tracking-ux.md); the learning gains stay every
    ``tracking.gain_every`` generations (three lifetimes each)."""
    return max(1, generations // CURVE_POINTS)


def placement_params(placement: Placement) -> dict[str, str]:
    """``placement.*`` params of what ran: no actor or GPU keys for an in-process CPU run."""
    params = placement.params()
    if placement.where == "in-process":
        params = {k: v for k, v in params.items() if k not in ("placement.address", "placement.num_actors",
                                                                "placement.num_cpus_per_actor",
                                                                "placement.num_gpus_per_actor")}
    if placement.device == "cpu" and not placement.num_gpus_per_actor:
        params.pop("placement.num_gpus_per_actor", None)
    return params


def headline_tags(head: dict[str, Any]) -> dict[str, str]:
    """Tags beside the headline metrics: which genome the run recommends and the best baseline's name."""
    return {"summary.recommended": head["which"], "summary.recommended_rule": head["recommended_label"],
            **({"summary.best_baseline": head["best_baseline_label"]} if "best_baseline_label" in head else {})}


def add_finetune_to_description(cfg: Config, run_id: str, finetune_run_id: str, before: float, after: float,
                                better: bool, *, report: Optional[dict[str, Any]] = None, generations: int = 0,
                                history=(), equations=(), finetuned_equations=(), steps: int = 0,
                                finetuned_genome: Optional[torch.Tensor] = None) -> None:
    """Rewrite an evolution run's description once its fine-tune is done: the rule to use first (the fine-tuned
    one when it is better on held-out episodes), the fine-tune's result, the next commands for that genome;
    and its headline metrics and tags with the fine-tune in them. Without ``report`` (an older caller) the
    fine-tune's line is added to the description as it is."""
    from .run_page import next_commands, rule_legend

    tracker = Tracker(resolve_tracking_uri(cfg.tracking.tracking_uri))
    run = tracker.get_run(run_id)
    tracker.run_id, tracker.experiment_id = run_id, run.info.experiment_id
    if report is not None:
        from .finetune import train_spec_of

        finetune = {"run_id": finetune_run_id, "before": before, "after": after, "steps": steps,
                    "equations": list(finetuned_equations)}
        model = train_spec_of(cfg)[1].model
        tracker.set_description(evolution_description(
            run_id=run_id, flat=flatten(cfg), generations=generations, report=report, equations=list(equations),
            legend=rule_legend(model), history=history, finetune=finetune, uri=tracker.shown_uri,
            experiment_id=run.info.experiment_id))
        head = headline(report, finetune)
        tracker.client.log_batch(run_id, metrics=[_metric(k, v, generations) for k, v in headline_metrics(head).items()])
        tracker.set_tags(headline_tags(head))
        if finetuned_genome is not None:    # mse_vs_tasks_seen.png again, with the fine-tuned rule in it
            from .run_page import FINETUNED

            spec = train_spec_of(cfg)[1]
            ev = Evaluator(cfg, "cpu", spec=spec)
            scores = ev.score(finetuned_genome.reshape(1, -1).float(), curve=True)
            curves = {FINETUNED: scores.curve_per_episode[0].tolist(), **learner_curves(report)}
            tracker.log_figure(mse_vs_tasks_seen(curves, title=f"held-out episodes, {cfg.task.order} stream",
                                                 ylabel="query MSE" if ev.task.kind == "regression"
                                                 else "query cross-entropy"), "mse_vs_tasks_seen.png")
        return
    text = run.data.tags.get("mlflow.note.content", "")
    head = text.split("\n### Next", 1)[0].rstrip()
    metric = "MSE" if cfg.task.name == "sinusoid" else "cross-entropy"
    head += (f"\n\nFine-tuned by BPTT (nested run `{finetune_run_id}`): held-out {metric} {before:.3f} → {after:.3f}; "
             f"the genome to use: {'the fine-tuned one' if better else 'the search center (fine-tuning did not help)'}.")
    tracker.set_description("\n".join([head, "", "### Next", "", "```",
                                        *next_commands(run_id, finetuned=better, uri=tracker.shown_uri), "```"]))


def _metric(key: str, value: float, step: int):
    import time

    from mlflow.entities import Metric

    return Metric(key, float(value), int(time.time() * 1000), int(step))
