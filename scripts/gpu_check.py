#!/usr/bin/env python
"""Check evoplast on a CUDA GPU in a few minutes: is it right (against the CPU), and how fast is it?

    python scripts/gpu_check.py [--out DIR]          # on a machine with an NVIDIA GPU and a CUDA torch
    python scripts/gpu_check.py --device cpu --quick # every step on the CPU, small: checks this script

1. Correctness. The same population's fitness (``Evaluator(cfg, dev).fitness(genomes, 0)``: the whole
   batched lifetime plus the query loss) on the CPU (PyTorch ops) and on the GPU, eager and replayed as a
   CUDA graph (``evaluation.cuda_graph``, the default on a GPU), for every searchable rule (hebb, oja,
   abcd, terms) at every granularity (layer, neuron, synapse) on 11-40-40-1 with every layer plastic, for
   ``configs/default.yaml`` as it is, and at paper width (11-300-300-1 of ``configs/cluster.yaml``, the
   paper's 9 layers of width 300). Pass: every genome's fitness within rtol 1e-3 (atol 1e-4) of the CPU and
   the same genomes non-finite. The report also says how much learning moved the loss (|on - off|), so
   a check that passes because the update did nothing shows as such, and how far TF32 moves the GPU.
2. Throughput, fp32 (TF32 off), eager vs CUDA graph: lifetimes/s; GFLOP/s counting 2·m·out·in per layer
   and step for the forward pass, the same again per plastic layer for the update, and the query forward
   (feedback ignored: a lower bound); GB/s counting 8 bytes per fp32 plastic weight per step (read and
   write once: a lower bound). Beside them, timed in the same run: a plain batched matmul of the same
   shapes (the forward and update matmuls, nothing else; the faster of eager and graphed) and a plain copy
   of a tensor as large as all lifetimes' weights, and the fraction of each that the lifetime reaches.
   Shapes: the default (11-40-40-1, output layer plastic, 100 steps of 8), 11-300-300-1 and 9 layers of
   width 300 with every layer plastic (400 steps of 32), at several population sizes.
3. Generations: one generation's evaluation (decode + episodes + lifetimes + fitness, as an actor runs
   it) of ``configs/default.yaml`` (P=32, K=4) and of ``configs/cluster.yaml`` (the whole population of
   256 x 8 episodes on one GPU, and one actor's quarter), eager vs graphed, beside this machine's CPU.

Writes ``gpu_check.json`` and ``gpu_check.md`` (the tables) to ``--out`` when given.

Exit codes: 0 = checked, GPU agrees with the CPU; 1 = the GPU disagrees; 2 = no CUDA device: one
line says so and nothing runs (so a CI job on a CPU machine can tell "not checked" from "passed").
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

import torch  # noqa: E402

from evoplast.bench.timing import (copy_bytes_per_second, lifetime_cost, median_seconds,  # noqa: E402
                                   plain_bmm_seconds_per_step)

RTOL, ATOL = 1e-3, 1e-4
PAPER_STREAM = ["task.num_tasks=10", "task.batches_per_task=40", "task.batch_size=32"]     # 400 steps of 32
QUICK_STREAM = ["task.num_tasks=2", "task.batches_per_task=5", "task.batch_size=8"]        # 10 steps of 8
STABLE_HEBB = ["rule.name=hebb", "rule.eta_scale=0.0000003", "rule.eta_init=1.0"]  # finite lifetimes at width 300
DEFAULT = str(ROOT / "configs" / "default.yaml")
CLUSTER = str(ROOT / "configs" / "cluster.yaml")
# Rule scales at 11-40-40-1, every layer plastic, 100 steps of 8, chosen on a CPU so that the update moves
# the query loss (|on - off| in the report) while no lifetime diverges.
RULE_SCALES = {"hebb": ["rule.eta_scale=0.0001", "rule.eta_init=1.0"],
               "oja": ["rule.eta_scale=0.0001", "rule.eta_init=1.0"],
               "abcd": ["rule.eta_scale=0.0001", "rule.eta_init=1.0"],
               "terms": ["rule.terms=[hebb,error_hebb,oja_decay,pseudo_grad]", "rule.term_scale=0.001"]}


def cuda_problem() -> str | None:
    """Why CUDA cannot be used here (one line), or None when it can."""
    with warnings.catch_warnings():   # an old driver makes is_available() warn; the line below says it
        warnings.simplefilter("ignore")
        if torch.version.cuda is None:
            return f"torch {torch.__version__} is a CPU-only build (install the CUDA build of torch)"
        if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
            return (f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no usable CUDA device "
                    f"(no NVIDIA GPU, no driver, or CUDA_VISIBLE_DEVICES hides it)")
    return None


def correctness_configs(quick: bool) -> list[tuple[str, str | None, list[str], int, int]]:
    """``(name, config file, overrides, genomes P, episodes K)`` whose CPU and GPU fitness are compared."""
    stream = QUICK_STREAM if quick else []
    small = ["network.hidden=[16,16]" if quick else "network.hidden=[40,40]", "network.plastic_layers=[]"]
    rows = []
    for rule in ("hebb", "oja", "abcd", "terms"):
        for gran in ("layer", "neuron", "synapse"):
            rows.append((f"{rule}/{gran}, every layer plastic", None,
                         stream + small + [f"rule.name={rule}", f"rule.granularity={gran}", *RULE_SCALES[rule]],
                         8, 2))
    rows.append(("configs/default.yaml", DEFAULT, stream, 32, 4))
    paper = QUICK_STREAM if quick else PAPER_STREAM
    w = 16 if quick else 300
    rows += [
        (f"cluster.yaml 11-{w}-{w}-1 (P, K smaller)", CLUSTER, paper + [f"network.hidden=[{w},{w}]"], 8, 2),
        (f"9 layers of width {w}, hebb on every layer", None, paper + [
            f"network.hidden=[{','.join([str(w)] * 8)}]", *STABLE_HEBB], 4, 2),
    ]
    return rows


def throughput_configs(quick: bool) -> list[tuple[str, str | None, list[str], list[int], int]]:
    """``(name, config file, overrides, population sizes, episodes K)`` of the throughput table."""
    if quick:
        return [("11-16-16-1 (quick)", None, QUICK_STREAM + ["network.hidden=[16,16]", *STABLE_HEBB], [8], 2)]
    return [
        ("default 11-40-40-1, 100x8", DEFAULT, [], [32, 256, 1024], 4),
        ("11-300-300-1 all plastic, 400x32", None, PAPER_STREAM + ["network.hidden=[300,300]", *STABLE_HEBB],
         [16, 64, 256], 4),
        ("9 x 300 all plastic, 400x32", None, PAPER_STREAM + ["network.hidden=[300,300,300,300,300,300,300,300]",
                                                              *STABLE_HEBB], [16, 64, 128], 4),
    ]


# The model the configs without a file are checked with (chosen before the defaults became configs/default.yaml):
# every layer plastic, oja unless a row names a rule, a sum over the batch, fixed initial weights.
NO_FILE = ["network.plastic_layers=[]", "rule.name=oja", "rule.eta_scale=0.01", "rule.batch_reduction=sum",
           "genome.evolve_init_weights=false", "search.algorithm=cmaes", "finetune.after_evolution=false"]


def config(path: str | None, overrides: list[str], *extra: str):
    from evoplast.config import load_config

    return load_config(path, [*(NO_FILE if path is None else []), *overrides, *extra])


def population(ev, p: int, seed: int = 0, std: float = 0.01) -> torch.Tensor:
    """``[P, D]``: the config's initial genome plus small noise, the same on every device."""
    gen = torch.Generator().manual_seed(seed)
    return ev.spec.initial_vector() + std * torch.randn(p, ev.spec.dim, generator=gen)


def max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs() / b.abs().clamp_min(1e-12)).max().item()


def check_correctness(device: str, quick: bool, results: dict) -> bool:
    from evoplast.evaluation import Evaluator

    print(f"1. correctness: fitness on {device} (eager, and replayed as a CUDA graph) vs cpu, same genomes and "
          f"episodes; pass = rtol {RTOL:g}, atol {ATOL:g}, same non-finite genomes", flush=True)
    ok = True
    rows = results.setdefault("correctness", [])
    for name, path, overrides, p, k in correctness_configs(quick):
        cfg = config(path, overrides, f"evaluation.episodes={k}", "evaluation.fused_kernel=false")
        cpu = Evaluator(cfg, "cpu")
        genomes = population(cpu, p)
        ref, ref_bad = cpu.fitness(genomes, 0)
        off = cpu.score(genomes, learn=False, episodes=cpu.episodes(cpu_purpose(), 0, k)).fitness
        eager, eager_bad = Evaluator(config(path, overrides, f"evaluation.episodes={k}",
                                            "evaluation.cuda_graph=false", "evaluation.fused_kernel=false"),
                                     device).fitness(genomes, 0)
        graphed_ev = Evaluator(cfg, device)
        graphed, graphed_bad = graphed_ev.fitness(genomes, 0)
        graphed2, _ = graphed_ev.fitness(genomes.flip(0), 1)           # a replay with new inputs
        eager2, _ = Evaluator(cfg, "cpu").fitness(genomes.flip(0), 1)
        good = all(torch.allclose(got, ref, rtol=RTOL, atol=ATOL) for got in (eager, graphed)) \
            and torch.equal(eager_bad, ref_bad) and torch.equal(graphed_bad, ref_bad) \
            and torch.allclose(graphed2, eager2, rtol=RTOL, atol=ATOL)
        ok &= good
        row = {"name": name, "P": p, "K": k, "fitness_min": ref.min().item(), "fitness_max": ref.max().item(),
               "learning_moves_loss": (ref - off).abs().mean().item(), "rel_eager": max_rel(eager, ref),
               "rel_graph": max_rel(graphed, ref), "rel_graph_replay": max_rel(graphed2, eager2),
               "nonfinite": int(ref_bad.sum()), "ok": bool(good)}
        line = (f"   {name:<44} P={p:<3} K={k} fitness {row['fitness_min']:8.3f}..{row['fitness_max']:8.3f}  "
                f"|on-off| {row['learning_moves_loss']:.2e}  max rel diff eager {row['rel_eager']:.2e} "
                f"graph {row['rel_graph']:.2e}/{row['rel_graph_replay']:.2e}  non-finite {row['nonfinite']}  "
                f"{'ok' if good else 'MISMATCH'}")
        if device == "cuda":
            torch.set_float32_matmul_precision("high")        # TF32 on, for the report only
            tf32, _ = Evaluator(cfg, device).fitness(genomes, 0)
            torch.set_float32_matmul_precision("highest")
            row["rel_tf32"] = max_rel(tf32, ref)
            line += f"  | TF32 {row['rel_tf32']:.2e}"
        rows.append(row)
        print(line, flush=True)
    return ok


def cpu_purpose():
    from evoplast.seeding import Purpose

    return Purpose.TRAIN


def measure_throughput(device: str, quick: bool, results: dict) -> None:
    from evoplast.evaluation import Evaluator, score_params
    from evoplast.cuda_graphs import GraphedScorer
    from evoplast.seeding import Purpose

    print(f"2. throughput on {device}, fp32 (TF32 off): B = P x K lifetimes in one batched lifetime", flush=True)
    print(f"   {'config':<34} {'mode':<6} {'B':>5} {'lifetimes/s':>11} {'GFLOP/s':>8} {'bmm GFLOP/s':>11} "
          f"{'frac':>5} {'GB/s':>7} {'copy GB/s':>9} {'frac':>5}")
    rows = results.setdefault("throughput", [])
    for name, path, overrides, sizes, k in throughput_configs(quick):
        cfg = config(path, overrides, f"evaluation.episodes={k}", "evaluation.fused_kernel=false")
        ev = Evaluator(cfg, device)
        model = ev.spec.model
        episodes = ev.episodes(Purpose.TRAIN, 0, k)
        steps, m = episodes.num_steps, cfg.task.batch_size
        flops, bytes_ = lifetime_cost(model, steps, m, cfg.task.num_tasks * cfg.task.query_size)
        for p in sizes:
            b = p * k
            params = ev.decode(population(ev, p))
            eager = lambda: score_params(ev.learner, params, episodes, cap=cfg.evaluation.loss_cap)  # noqa: E731
            modes = [("eager", eager)]
            if device == "cuda":
                graphed = GraphedScorer(lambda pr, ep: score_params(ev.learner, pr, ep, cap=cfg.evaluation.loss_cap))
                modes.append(("graph", lambda: graphed(params, episodes)))
            with torch.no_grad():
                timed = [(mode, median_seconds(fn, device=device), 0.0) for mode, fn in modes]
                if (device == "cuda" and model.sizes[1] >= 300) or quick:
                    timed += lower_precision(ev, params, episodes, cfg.evaluation.loss_cap, device)
                bmm_flops_per_step = lifetime_cost(model, 1, m)[0]      # the forward and update matmuls
                bmm_rate = b * bmm_flops_per_step / plain_bmm_seconds_per_step(model, b, m, device)
                weights = sum(model.sizes[l] * model.sizes[l - 1] for l in model.plastic_layers)
                copy_rate = copy_bytes_per_second(b * weights, device)
            for mode, seconds, error in timed:
                flop_rate, byte_rate = b * flops / seconds, b * bytes_ / seconds
                row = {"config": name, "mode": mode, "P": p, "K": k, "B": b, "lifetimes_per_s": b / seconds,
                       "loss_rel_error": error,
                       "gflops": flop_rate / 1e9, "bmm_gflops": bmm_rate / 1e9, "flop_fraction": flop_rate / bmm_rate,
                       "gbps": byte_rate / 1e9, "copy_gbps": copy_rate / 1e9, "byte_fraction": byte_rate / copy_rate}
                rows.append(row)
                print(f"   {name:<34} {mode:<6} {b:>5} {num(row['lifetimes_per_s']):>11} {num(row['gflops']):>8} "
                      f"{num(row['bmm_gflops']):>11} {row['flop_fraction']:>5.2f} {num(row['gbps']):>7} "
                      f"{num(row['copy_gbps']):>9} {row['byte_fraction']:>5.2f}"
                      + (f"  loss rel error vs fp32 {error:.1e}" if mode in ("tf32", "bf16") else ""), flush=True)
            del params
            if device == "cuda":
                torch.cuda.empty_cache()


def lower_precision(ev, params, episodes, cap: float, device: str = "cuda") -> list[tuple[str, float, float]]:
    """``(mode, seconds, max relative error of the query loss vs fp32)`` of the graphed lifetime with TF32
    matmuls, and with everything in bf16 (weights, activities, data: autocast does not apply, the
    in-place updates need one dtype), each captured afresh (a graph keeps the precision it was captured with)."""
    from dataclasses import replace

    from evoplast.evaluation import score_params
    from evoplast.cuda_graphs import GraphedScorer

    def bf16(t):
        return t.to(torch.bfloat16) if t.is_floating_point() else t

    fp32 = score_params(ev.learner, params, episodes, cap=cap).loss
    out = []
    for mode in ("tf32", "bf16"):
        torch.set_float32_matmul_precision("high" if mode == "tf32" else "highest")
        pr, ep = params, episodes
        if mode == "bf16":
            pr = {n: bf16(v) for n, v in params.items()}
            ep = replace(episodes, **{n: bf16(getattr(episodes, n)) for n in ("stream_x", "stream_y", "query_x",
                                                                                "query_y")})
        scorer = GraphedScorer(lambda a, b: score_params(ev.learner, a, b, cap=cap)) if device == "cuda" else \
            (lambda a, b: score_params(ev.learner, a, b, cap=cap))
        seconds = median_seconds(lambda: scorer(pr, ep), device=device)
        error = max_rel(scorer(pr, ep).loss.float(), fp32)
        out.append((mode, seconds, error))
    torch.set_float32_matmul_precision("highest")
    return out


def measure_generations(device: str, quick: bool, results: dict) -> None:
    """One generation's evaluation, as an actor runs it, eager vs graphed vs this machine's CPU."""
    from evoplast.evaluation import Evaluator

    print("3. one generation's evaluation (decode + episodes + lifetimes + fitness), median of 3 after a warm-up",
          flush=True)
    rows = results.setdefault("generations", [])
    cases = [("configs/default.yaml (P=32, K=4)", DEFAULT, [], 32)]
    if not quick:
        cases += [("configs/cluster.yaml, all 256 x 8 on one GPU", CLUSTER, [], 256),
                  ("configs/cluster.yaml, one actor's 64 x 8", CLUSTER, [], 64)]
    else:
        cases = [("configs/default.yaml (quick, P=8)", DEFAULT, QUICK_STREAM, 8)]
    for name, path, overrides, p in cases:
        timings = {}
        variants = [("cpu", "cpu", [])]
        if device == "cuda":
            variants += [("gpu eager", "cuda", ["evaluation.cuda_graph=false"]), ("gpu graph", "cuda", [])]
        for label, dev, extra in variants:
            if label == "cpu" and p > 64:
                continue                                   # minutes on a CPU: the per-actor row says enough
            ev = Evaluator(config(path, overrides, *extra), dev)
            genomes = population(ev, p)
            gen = iter(range(1000))
            timings[label] = median_seconds(lambda: ev.fitness(genomes, next(gen)), device=dev)
        rows.append({"case": name, **{f"{k} s": v for k, v in timings.items()}})
        print(f"   {name:<46} " + "  ".join(f"{k} {v * 1e3:9.1f} ms" for k, v in timings.items()), flush=True)


def num(x: float) -> str:
    """A rate for the table: one decimal from 10 on, three below (tiny shapes give tiny rates)."""
    return f"{x:.1f}" if x >= 10 else f"{x:.3f}"


def markdown(results: dict) -> str:
    """The tables of ``results`` in markdown, for docs/performance.md."""
    env = results["environment"]
    out = [f"GPU check: {env['device']}, torch {env['torch']}, CUDA {env['cuda']}, {env['date']}", ""]
    out += ["| config | P x K | loss moved by learning | eager rel diff | graph rel diff | TF32 rel diff | ok |",
            "|---|---|---|---|---|---|---|"]
    for r in results["correctness"]:
        out.append(f"| {r['name']} | {r['P']} x {r['K']} | {r['learning_moves_loss']:.2e} | {r['rel_eager']:.1e} | "
                   f"{r['rel_graph']:.1e} | {r.get('rel_tf32', float('nan')):.1e} | {'yes' if r['ok'] else 'NO'} |")
    out += ["", "| config | mode | B | lifetimes/s | GFLOP/s | bmm GFLOP/s | frac | GB/s | copy GB/s | frac | "
            "loss error vs fp32 |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["throughput"]:
        out.append(f"| {r['config']} | {r['mode']} | {r['B']} | {num(r['lifetimes_per_s'])} | {num(r['gflops'])} | "
                   f"{num(r['bmm_gflops'])} | {r['flop_fraction']:.2f} | {num(r['gbps'])} | {num(r['copy_gbps'])} | "
                   f"{r['byte_fraction']:.2f} | {r['loss_rel_error']:.1e} |")
    out += ["", "| generation | " + " | ".join(k for k in results["generations"][0] if k != "case") + " |",
            "|---|" + "---|" * (len(results["generations"][0]) - 1)]
    for r in results["generations"]:
        out.append(f"| {r['case']} | " + " | ".join(f"{v * 1e3:.1f} ms" for k, v in r.items() if k != "case") + " |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    import datetime

    from evoplast.cli import parser

    ap = parser(__doc__.splitlines()[0], "gpu_check.py", config=False, tracking=False)   # one-line errors, --help-config
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                    help="device under test (cpu: compare the CPU with itself, to check this script)")
    ap.add_argument("--quick", action="store_true", help="tiny shapes instead of the paper-scale ones")
    ap.add_argument("--out", metavar="DIR", help="write gpu_check.json and gpu_check.md here")
    ap.add_argument("--only", nargs="+", choices=["correctness", "throughput", "generations"],
                    default=["correctness", "throughput", "generations"], help="parts to run (default: all)")
    args = ap.parse_args(argv)

    if args.device == "cuda":
        problem = cuda_problem()
        if problem:
            print(f"gpu_check: no CUDA device, nothing checked: {problem}", file=sys.stderr)
            return 2
        name = torch.cuda.get_device_name(0)
        print(f"gpu_check: {name}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
              f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
        precision = torch.get_float32_matmul_precision()
        print(f"   float32 matmul precision: {precision!r} "
              f"({'TF32 off, as PyTorch ships' if precision == 'highest' else 'TF32 was ON: turned off for the checks'})")
        torch.set_float32_matmul_precision("highest")
    else:
        name = "cpu"
        print(f"gpu_check: device cpu (a check of the script: the CPU is compared with itself), "
              f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    results = {"environment": {"device": name, "torch": torch.__version__, "cuda": torch.version.cuda,
                               "date": datetime.date.today().isoformat()}}
    t0 = time.perf_counter()
    ok = True
    if "correctness" in args.only:
        ok = check_correctness(args.device, args.quick, results)
    if "throughput" in args.only:
        measure_throughput(args.device, args.quick, results)
    if "generations" in args.only:
        measure_generations(args.device, args.quick, results)
    results["ok"] = ok
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "gpu_check.json").write_text(json.dumps(results, indent=1))
        if {"correctness", "throughput", "generations"} <= set(args.only):
            (out / "gpu_check.md").write_text(markdown(results))
    print(f"gpu_check: {'OK' if ok else 'FAILED: the GPU disagrees with the CPU'} "
          f"({time.perf_counter() - t0:.0f} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    from evoplast.cli import run_main

    run_main(main)
