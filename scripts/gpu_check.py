#!/usr/bin/env python
"""Check evoplast on a CUDA GPU in a few minutes: is it right (against the CPU), and how fast is it?

    python scripts/gpu_check.py                      # on a machine with an NVIDIA GPU and a CUDA torch
    python scripts/gpu_check.py --device cpu --quick # every step on the CPU, small: checks this script

1. Correctness. The same population's fitness (``Evaluator(cfg, dev).fitness(genomes, 0)``: the whole
   batched lifetime plus the query loss) on the CPU and on the GPU, for three configs: the cluster
   config (11-300-300-1, output layer plastic), the paper's 9 layers of width 300 with every layer
   plastic (Hebb), and 11-64-64-1 with Oja per neuron on every layer. Pass: every genome's fitness
   within rtol 1e-3 (atol 1e-4) and the same genomes non-finite on both. PyTorch leaves TF32 off for
   float32 matmuls (``torch.get_float32_matmul_precision() == 'highest'``); the script says if it
   found it on, checks with it off, and then reports how far the GPU moves from the CPU with TF32
   on (reported, not judged: TF32 keeps 10 mantissa bits, and the error compounds over 400 steps).
2. Throughput, for the paper-scale shapes of DESIGN §3 with every layer plastic, 400 steps of 32:
   11-300-300-1 and 9 layers of width 300 (``network.hidden=[300]*8``). Per config: lifetimes/s;
   GFLOP/s counting 2·m·out·in per layer and step for the forward pass, the same again per plastic
   layer for the update, and the query forward (feedback ignored: a lower bound); GB/s counting 8
   bytes per fp32 plastic weight per step (read and write once: a lower bound). Beside them, timed in
   the same run: a plain batched matmul of the same shapes (the forward and update matmuls of 40
   steps, nothing else) and a plain copy of a tensor as large as all lifetimes' weights, and the
   fraction of each that the lifetime reaches.

Exit codes: 0 = checked, GPU agrees with the CPU; 1 = the GPU disagrees; 2 = no CUDA device: one
line says so and nothing runs (so a CI job on a CPU machine can tell "not checked" from "passed").
"""

from __future__ import annotations

import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

import torch  # noqa: E402

RTOL, ATOL = 1e-3, 1e-4
PAPER_STREAM = ["task.num_tasks=10", "task.batches_per_task=40", "task.batch_size=32"]     # 400 steps of 32
QUICK_STREAM = ["task.num_tasks=2", "task.batches_per_task=5", "task.batch_size=8"]        # 10 steps of 8
STABLE_HEBB = ["rule.name=hebb", "rule.eta_scale=0.0000003", "rule.eta_init=1.0"]  # finite lifetimes at width 300


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


def correctness_configs(quick: bool) -> list[tuple[str, list[str], int, int]]:
    """``(name, overrides, genomes P, episodes K)``: configs whose CPU and GPU fitness are compared.

    Each rule's scale is the largest of a 3x grid whose lifetimes stay finite at paper scale (measured on
    a CPU: query MSE with plasticity / without it 3.59 / 4.0, 3.554 / 3.545, 4.03 / 3.86): the update
    changes the result, so a wrong update on the GPU shows, and nothing is chaotic enough to amplify
    rounding."""
    stream = QUICK_STREAM if quick else PAPER_STREAM
    w = 16 if quick else 300
    return [
        (f"cluster: 11-{w}-{w}-1, hebb on the output layer", stream + [
            f"network.hidden=[{w},{w}]", "network.plastic_layers=[3]", "rule.name=hebb", "rule.eta_scale=0.00001",
            "rule.eta_init=1.0", "genome.evolve_init_weights=true"], 8, 2),
        (f"9 layers of width {w}, hebb on every layer", stream + [
            f"network.hidden=[{','.join([str(w)] * 8)}]", "rule.name=hebb", "rule.eta_scale=0.0000003",
            "rule.eta_init=1.0"], 4, 2),
        ("11-64-64-1, oja per neuron on every layer", stream + [
            "network.hidden=[64,64]", "rule.name=oja", "rule.granularity=neuron", "rule.eta_scale=0.000003",
            "rule.eta_init=1.0"], 16, 2),
    ]


def throughput_configs(quick: bool) -> list[tuple[str, list[str], int, int]]:
    """``(name, overrides, genomes P, episodes K)`` of the paper-scale throughput measurements."""
    if quick:
        return [("11-16-16-1 (quick)", QUICK_STREAM + ["network.hidden=[16,16]", *STABLE_HEBB], 8, 2)]
    return [
        ("11-300-300-1, all plastic", PAPER_STREAM + ["network.hidden=[300,300]", *STABLE_HEBB], 256, 4),
        ("9 layers of width 300, all plastic", PAPER_STREAM + ["network.hidden=[300,300,300,300,300,300,300,300]",
                                                               *STABLE_HEBB], 128, 4),
    ]


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def median_seconds(fn, device: str, reps: int = 3) -> float:
    fn()                                  # warm-up: kernels chosen, memory allocated
    synchronize(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def population(ev, p: int, seed: int = 0) -> torch.Tensor:
    """``[P, D]``: the config's initial genome plus small noise, the same on every device."""
    gen = torch.Generator().manual_seed(seed)
    return ev.spec.initial_vector() + 0.01 * torch.randn(p, ev.spec.dim, generator=gen)


def check_correctness(device: str, quick: bool) -> bool:
    from evoplast.config import load_config
    from evoplast.evaluation import Evaluator

    print(f"1. correctness: fitness on {device} vs cpu, same genomes and episodes; pass = rtol {RTOL:g}, "
          f"atol {ATOL:g}, same non-finite genomes")
    ok = True
    for name, overrides, p, k in correctness_configs(quick):
        cfg = load_config(None, overrides + [f"evaluation.episodes={k}"])
        genomes = population(Evaluator(cfg, "cpu"), p)
        ref, ref_bad = Evaluator(cfg, "cpu").fitness(genomes, 0)
        got, got_bad = Evaluator(cfg, device).fitness(genomes, 0)
        rel = ((got - ref).abs() / ref.abs().clamp_min(1e-12)).max().item()
        good = torch.allclose(got, ref, rtol=RTOL, atol=ATOL) and torch.equal(got_bad, ref_bad)
        ok &= good
        line = (f"   {name:<44} P={p:<3} K={k}  fitness {ref.min().item():9.4f}..{ref.max().item():9.4f}  "
                f"max rel diff {rel:.2e}  non-finite {int(ref_bad.sum())}/{int(got_bad.sum())}  "
                f"{'ok' if good else 'MISMATCH'}")
        if device == "cuda":
            torch.set_float32_matmul_precision("high")        # TF32 on, for the report only
            tf32, _ = Evaluator(cfg, device).fitness(genomes, 0)
            torch.set_float32_matmul_precision("highest")
            line += f"  | with TF32: max rel diff {((tf32 - ref).abs() / ref.abs().clamp_min(1e-12)).max().item():.2e}"
        print(line, flush=True)
    return ok


def lifetime_cost(model, steps: int, m: int, query_rows: int) -> tuple[float, float]:
    """``(FLOP, bytes)`` lower bounds of one lifetime (see the module docstring)."""
    layers = [(model.sizes[l], model.sizes[l - 1]) for l in range(1, model.num_layers + 1)]
    plastic = [layers[l - 1] for l in model.plastic_layers]
    forward = sum(2 * m * o * i for o, i in layers)
    update = sum(2 * m * o * i for o, i in plastic)
    flops = steps * (forward + update) + sum(2 * query_rows * o * i for o, i in layers)
    bytes_ = steps * sum(8 * o * i for o, i in plastic)
    return float(flops), float(bytes_)


def plain_bmm_seconds_per_step(model, b: int, m: int, device: str, steps: int = 40) -> float:
    """Seconds per step of the lifetime's matmuls alone: per layer a forward bmm, per plastic layer
    an outer-product bmm, over ``b`` lifetimes."""
    sizes = model.sizes
    ws = [torch.randn(b, sizes[l], sizes[l - 1], device=device) for l in range(1, len(sizes))]
    xs = [torch.randn(b, m, sizes[l - 1], device=device) for l in range(1, len(sizes))]
    posts = [torch.randn(b, m, sizes[l], device=device) for l in range(1, len(sizes))]
    outs = [torch.empty(b, m, sizes[l], device=device) for l in range(1, len(sizes))]
    grads = [torch.empty_like(w) for w in ws]

    def run():
        for _ in range(steps):
            for l in range(len(ws)):
                torch.bmm(xs[l], ws[l].transpose(1, 2), out=outs[l])
                if (l + 1) in model.plastic_layers:
                    torch.bmm(posts[l].transpose(1, 2), xs[l], out=grads[l])

    return median_seconds(run, device) / steps


def copy_bytes_per_second(numel: int, device: str) -> float:
    """Bytes/s of a plain fp32 copy of ``numel`` numbers (read + write)."""
    src = torch.randn(numel, device=device)
    dst = torch.empty_like(src)
    seconds = median_seconds(lambda: [dst.copy_(src) for _ in range(5)], device) / 5
    return 8.0 * numel / seconds


def measure_throughput(device: str, quick: bool) -> None:
    from evoplast.config import load_config
    from evoplast.evaluation import Evaluator, score_params
    from evoplast.seeding import Purpose

    print(f"2. throughput on {device}, fp32 (TF32 off): B = P x K lifetimes in one batched lifetime")
    header = (f"   {'config':<36} {'B':>5} {'lifetimes/s':>11} {'GFLOP/s':>8} {'bmm GFLOP/s':>11} {'frac':>5} "
              f"{'GB/s':>7} {'copy GB/s':>9} {'frac':>5}")
    print(header)
    for name, overrides, p, k in throughput_configs(quick):
        cfg = load_config(None, overrides + [f"evaluation.episodes={k}"])
        ev = Evaluator(cfg, device)
        params = ev.decode(population(ev, p))                           # {name: [P, ...]} on the device
        episodes = ev.episodes(Purpose.TRAIN, 0, k)                     # K episodes on the device
        model = ev.spec.model
        steps, m = episodes.num_steps, cfg.task.batch_size
        flops, bytes_ = lifetime_cost(model, steps, m, cfg.task.num_tasks * cfg.task.query_size)
        b = p * k
        with torch.no_grad():
            seconds = median_seconds(lambda: score_params(ev.learner, params, episodes, cap=cfg.evaluation.loss_cap),
                                     device)
            bmm_flops_per_step = sum(2 * m * model.sizes[l] * model.sizes[l - 1] * (2 if l in model.plastic_layers
                                                                                    else 1)
                                     for l in range(1, model.num_layers + 1))
            bmm_rate = b * bmm_flops_per_step / plain_bmm_seconds_per_step(model, b, m, device)
            weights = sum(model.sizes[l] * model.sizes[l - 1] for l in model.plastic_layers)
            copy_rate = copy_bytes_per_second(b * weights, device)
        flop_rate, byte_rate = b * flops / seconds, b * bytes_ / seconds
        print(f"   {name:<36} {b:>5} {num(b / seconds):>11} {num(flop_rate / 1e9):>8} {num(bmm_rate / 1e9):>11} "
              f"{flop_rate / bmm_rate:>5.2f} {num(byte_rate / 1e9):>7} {num(copy_rate / 1e9):>9} "
              f"{byte_rate / copy_rate:>5.2f}", flush=True)


def num(x: float) -> str:
    """A rate for the table: one decimal from 10 on, three below (tiny shapes give tiny rates)."""
    return f"{x:.1f}" if x >= 10 else f"{x:.3f}"


def main() -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                    help="device under test (cpu: compare the CPU with itself, to check this script)")
    ap.add_argument("--quick", action="store_true", help="tiny shapes instead of the paper-scale ones")
    args = ap.parse_args()

    if args.device == "cuda":
        problem = cuda_problem()
        if problem:
            print(f"gpu_check: no CUDA device, nothing checked: {problem}", file=sys.stderr)
            return 2
        print(f"gpu_check: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
              f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
        precision = torch.get_float32_matmul_precision()
        print(f"   float32 matmul precision: {precision!r} "
              f"({'TF32 off, as PyTorch ships' if precision == 'highest' else 'TF32 was ON: turned off for the checks'})")
        torch.set_float32_matmul_precision("highest")
    else:
        print(f"gpu_check: device cpu (a check of the script: the CPU is compared with itself), "
              f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    t0 = time.perf_counter()
    ok = check_correctness(args.device, args.quick)
    measure_throughput(args.device, args.quick)
    print(f"gpu_check: {'OK' if ok else 'FAILED: the GPU disagrees with the CPU'} "
          f"({time.perf_counter() - t0:.0f} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
