#!/usr/bin/env python
"""One config over several seeds, with 95% confidence intervals.

    python scripts/seeds.py [--config X] --seeds 0 1 2 [--parallel auto|inprocess|ray] [--oml-budget none|lifetimes|N]
                            [--out results.md] [key=value ...]
    python scripts/seeds.py --runs RUN RUN RUN          # judge finished runs again (e.g. after the baselines changed)

Reads top to bottom: config -> a parent MLflow run -> one evolution per seed, each an MLflow run nested under
the parent (one after another in this process, or as parallel Ray tasks when the machine has a core for each
seed's actors) -> every seed's genome judged on the same held-out episodes (those of the first seed: the
paired differences are paired per episode) -> mean ± 95% CI over seeds of the held-out loss, every baseline
and the learning measures; per baseline the paired difference rule − baseline -> a markdown table (printed and
written), a JSON file and a PNG plot, logged to the parent run with the aggregate as metrics.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evoplast.cli import UsageError, config_from_args, parser, run_main  # noqa: E402



def judge(cfg, cfg_seed, center, oml_budget: str, out=None) -> dict:
    """The report of one seed's genome on the held-out episodes of ``cfg`` (shared by every seed), with OML at
    the requested meta-compute when asked (a progress line with elapsed time and ETA through ``out``)."""
    from evoplast.science import report as science_report
    from evoplast.science.analysis import add_oml, equal_lifetimes_steps
    from evoplast.evaluation import Evaluator

    spec = Evaluator(cfg_seed).spec                         # the seed's fixed segments
    ev = Evaluator(cfg, spec=spec)                          # episodes (held-out, validation) of the shared seed
    report = science_report.report(ev, center)
    if oml_budget != "none":
        steps = equal_lifetimes_steps(cfg_seed) if oml_budget == "lifetimes" else int(oml_budget)
        progress = None
        if out is not None:
            from evoplast.runs.progress import LineStream, Progress

            bar = Progress(steps, "OML meta-step", stream=LineStream(out))
            progress = lambda done, loss: bar.update(done, {"meta-loss": f"{loss:.3f}"})  # noqa: E731
        add_oml(report, ev, cfg_seed, steps, progress=progress, meta_ev=Evaluator(cfg_seed))
    return report


def one_seed(cfg, seed: int, parent_id: str, oml_budget: str, threads: int = 0, quiet: bool = False) -> dict:
    """Evolve with ``seed`` (an MLflow run nested under ``parent_id``) and judge it; returns its report."""
    import torch

    from evoplast.runs.evolve import run_evolution
    from evoplast.runs.tracking import Tracker, resolve_tracking_uri

    if threads:
        torch.set_num_threads(threads)
    # unnamed: each seed's run gets the default name task-rule-searcher-sSEED
    cfg_seed = cfg.replace(**{"seed": seed, "tracking.run_name": cfg.tracking.run_name and f"{cfg.tracking.run_name}-s{seed}"})
    out = (lambda line: None) if quiet else (lambda line: print(f"[seed {seed}] {line}", flush=True))
    result = run_evolution(cfg_seed, out=out, print_every=max(1, cfg.search.generations // 10))
    tracker = Tracker(resolve_tracking_uri(cfg.tracking.tracking_uri))
    tracker.client.set_tag(result.run_id, "mlflow.parentRunId", parent_id)
    if result.status != "FINISHED":
        raise KeyboardInterrupt
    if not quiet:
        out("judging the evolved rule and the baselines on the shared held-out episodes")
    report = judge(cfg, cfg_seed, result.center, oml_budget, out=None if quiet else out)
    tracker.run_id = result.run_id
    tracker.log_dict(report, "shared_report.json")   # judged on the held-out episodes every seed shares
    return {"seed": seed, "run_id": result.run_id, "report": report}


def main(argv: list[str] | None = None) -> int:
    p = parser("Run one config over several seeds; means and paired differences with 95% CIs.", "seeds.py")
    p.add_argument("--seeds", nargs="+", default=["0", "1", "2"], metavar="S", help="seeds (at least 2)")
    p.add_argument("--parallel", choices=["auto", "inprocess", "ray"], default="auto",
                   help="auto: Ray tasks when the machine has a core for every seed's actors, else one after another")
    p.add_argument("--oml-budget", default="none", metavar="none|lifetimes|N",
                   help="also meta-train OML per seed: as many lifetimes as the evolution lived, or N meta-steps")
    p.add_argument("--out", default=None, help="markdown file for the table (default seeds/<parent run>/seeds.md)")
    p.add_argument("--title", default="", help="heading of the markdown table")
    p.add_argument("--runs", nargs="+", default=None, metavar="RUN",
                   help="judge the genomes of these finished evolution runs (one per seed, their own configs) "
                        "instead of evolving: the aggregate again, e.g. after the baselines changed")
    args = p.parse_args(argv)
    # `--seeds 0 1 2 key=value ...`: the overrides after the seeds are overrides, not seeds
    args.overrides = [a for a in args.seeds if "=" in a] + args.overrides
    try:
        args.seeds = [int(a) for a in args.seeds if "=" not in a]
    except ValueError:
        raise UsageError(f"--seeds takes integers, got {' '.join(args.seeds)!r}") from None
    if len(set(args.seeds)) < 2:
        raise UsageError("--seeds needs at least 2 different seeds for an interval")
    if any(s < 0 for s in args.seeds):
        raise UsageError("--seeds must be >= 0")
    if args.oml_budget not in ("none", "lifetimes") and not args.oml_budget.isdigit():
        raise UsageError(f"--oml-budget {args.oml_budget!r}: expected none, lifetimes or a number of meta-steps")
    if args.runs:
        if args.config or args.overrides:
            raise UsageError("--runs takes each run's own config; drop --config and the overrides")
        cfg, judged = _judge_runs(args.runs, args.oml_budget)
        seeds = [j["seed"] for j in judged]
        if len(set(seeds)) < 2:
            raise UsageError("--runs needs runs of at least 2 different seeds")
    else:
        cfg, judged = config_from_args(args), None
        seeds = list(dict.fromkeys(args.seeds))

    from evoplast.config import flatten
    from evoplast.runs.plots import seeds_summary
    from evoplast.science.over_seeds import aggregate, markdown_table, metrics_of
    from evoplast.runs.session import RunSession
    from evoplast.runs.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(cfg.tracking.tracking_uri)
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):   # Ray workers may run elsewhere
        uri = "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    cfg = cfg.replace(**{"tracking.tracking_uri": uri, "checkpoint.dir": str(Path(cfg.checkpoint.dir).resolve()),
                         "seed": seeds[0]})
    # CPUs one seed's evolution uses: its actors, or one (in-process, or ray.num_actors=auto: each seed's run
    # decides its own placement inside its task)
    actors = cfg.ray.num_actors if isinstance(cfg.ray.num_actors, int) and cfg.ray.num_actors > 0 else 1
    parallel = args.parallel
    if parallel == "auto":
        parallel = "ray" if (os.cpu_count() or 1) >= len(seeds) * actors else "inprocess"

    # 1. the parent run (a run session: preflight, stop flag, lock, its status at the end)
    with RunSession(cfg, "seeds") as session:
        tracker = session.tracker
        session.start(f"seeds {' '.join(map(str, seeds))}", tags={}, source="scripts/seeds.py", config_artifact=False,
                      params={**flatten(cfg), "seeds": " ".join(map(str, seeds)), "seeds.parallel": parallel,
                              "seeds.oml_budget": args.oml_budget})
        print(f"evoplast: parent run {tracker.run_id} | seeds {seeds} | {parallel} | held-out episodes of seed "
              f"{seeds[0]}, shared by every seed")

        # 2. one evolution per seed
        if judged is not None:
            results = judged
        elif parallel == "inprocess":
            progress, results = seeds_progress(len(seeds)), []
            for s in seeds:
                results.append(one_seed(cfg, s, tracker.run_id, args.oml_budget))
                progress(results[-1])
        else:
            results = _ray_seeds(cfg, seeds, tracker.run_id, args.oml_budget, actors)

        # 3. the aggregate: table, json, plot, metrics
        agg = aggregate([r["report"] for r in results])
        agg["runs"] = {r["seed"]: r["run_id"] for r in results}
        title = args.title or f"{cfg.task.name}, seeds {', '.join(map(str, seeds))}"
        table = markdown_table(agg, title)
        out = Path(args.out) if args.out else Path("seeds") / tracker.run_id / "seeds.md"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(table)
        (out.with_suffix(".json")).write_text(json.dumps({"aggregate": agg, "reports": results}, indent=1))
        png = seeds_summary(agg, out.with_suffix(".png"), title)
        tracker.log_metrics(metrics_of(agg), step=0)
        for f in (out, out.with_suffix(".json"), png):
            tracker.log_artifact(f)
        print("\n" + table)
        print(f"Table {out}, plot {png}; MLflow parent run {tracker.run_id}; the seeds' runs "
              f"{', '.join(r['run_id'] for r in results)}" + ("" if judged is not None else " are nested under it"))
        print(f"Look at it: {tracker.ui_command()}")
        session.finish()
        return 0


def _judge_runs(run_ids, oml_budget):
    """``(config of the first run, [{seed, run_id, report}])``: each run's genome judged on the held-out episodes
    of the first run's seed."""
    import yaml

    from evoplast.config import from_dict, upgrade
    from evoplast.runs.artifacts import genome_of_run
    from evoplast.runs.tracking import Tracker, resolve_tracking_uri

    tracker = Tracker(resolve_tracking_uri())
    loaded = []
    for run_id in run_ids:
        saved, _ = genome_of_run(tracker, run_id, "best")
        loaded.append((run_id, from_dict(upgrade(yaml.safe_load(saved["config_yaml"]))), saved["genome"].float()))
    shared = loaded[0][1]
    results = []
    for run_id, cfg_run, genome in loaded:
        print(f"evoplast: judging run {run_id} (seed {cfg_run.seed}) on the held-out episodes of seed {shared.seed}")
        report = judge(cfg_run.replace(seed=shared.seed), cfg_run, genome, oml_budget)
        results.append({"seed": cfg_run.seed, "run_id": run_id, "report": report})
    return shared, results


def seeds_progress(total: int, stream=None):
    """``(result of a seed) -> None``: one line per seed done (``seeds 1/3 | last seed 0, held-out 2.567 |
    elapsed 1:05 | ETA 2:10``)."""
    from evoplast.runs.progress import Progress

    bar = Progress(total, "seeds", stream=stream, every=1)
    count = [0]

    def update(result: dict) -> None:
        count[0] += 1
        bar.update(count[0], {"last": f"seed {result['seed']}, held-out {float(result['report']['loss']):.3f}"})
        if count[0] >= total:
            bar.close()

    return update


def _ray_seeds(cfg, seeds, parent_id, oml_budget, actors):
    """Every seed as a Ray task with ``actors`` CPUs, evaluating its population in-process (no nested actors)."""
    import ray

    from evoplast.parallel.ray_pool import init_ray

    init_ray(cfg.ray)
    task = ray.remote(num_cpus=actors)(one_seed)
    local = cfg.replace(**{"ray.num_actors": 0})
    try:
        refs = [task.remote(local, s, parent_id, oml_budget, actors, True) for s in seeds]
        pending, progress = list(refs), seeds_progress(len(seeds))
        while pending:                                # a line per seed done, with elapsed time and ETA
            done, pending = ray.wait(pending, num_returns=1)
            progress(ray.get(done[0]))
        return ray.get(refs)
    finally:
        if not cfg.ray.address:
            ray.shutdown()


if __name__ == "__main__":
    run_main(main)
