"""Timing, cost counts and plain references shared by ``scripts/benchmark.py`` and ``scripts/gpu_check.py``.

Every measurement is a median of repetitions after a warm-up (kernels chosen, memory allocated, graphs
captured), and on a GPU every timed call ends with a synchronisation. The cost of a lifetime is counted
as a lower bound (what any implementation must at least do); the references (:func:`plain_bmm`,
:func:`copy_bytes_per_second`) are the ceilings a lifetime's rate is compared with, timed in the same
process. No Ray, no MLflow.

Shapes: a model ``(n_0, ..., n_L)`` has layers ``W_l [out_l = n_l, in_l = n_{l-1}]``; ``m`` rows per
mini-batch; ``b`` lifetimes side by side.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

from ..network import ModelSpec

__all__ = ["copy_bytes_per_second", "lifetime_cost", "median_seconds", "plain_bmm", "plain_bmm_seconds_per_step",
           "synchronize"]


def synchronize(device: str | torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def median_seconds(fn: Callable[[], object], *, reps: int = 3, warmup: int = 1,
                   device: str | torch.device = "cpu") -> float:
    """Median wall-clock seconds of ``fn()`` over ``reps`` calls, after ``warmup`` untimed calls; each
    timed call ends with :func:`synchronize`, so a GPU's queued work is counted."""
    if reps < 1 or warmup < 0:
        raise ValueError(f"need reps >= 1 and warmup >= 0, got reps={reps}, warmup={warmup}")
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _layers(model: ModelSpec) -> list[tuple[int, int]]:
    """``[(out_l, in_l)]`` for l = 1..L."""
    return [(model.sizes[l], model.sizes[l - 1]) for l in range(1, model.num_layers + 1)]


def lifetime_cost(model: ModelSpec, steps: int, m: int, query_rows: int = 0) -> tuple[float, float]:
    """``(FLOP, bytes)`` lower bounds of one lifetime of ``steps`` steps of ``m`` rows, then a query of
    ``query_rows`` rows. FLOP: ``2 m out in`` per layer and step (forward), the same again per plastic
    layer and step (the update's outer product), ``2 query_rows out in`` per layer for the query (the
    feedback is not counted). Bytes: 8 per fp32 plastic weight per step (read and written once)."""
    layers = _layers(model)
    plastic = [layers[l - 1] for l in model.plastic_layers]
    forward = sum(2 * m * o * i for o, i in layers)
    update = sum(2 * m * o * i for o, i in plastic)
    flops = steps * (forward + update) + sum(2 * query_rows * o * i for o, i in layers)
    bytes_ = steps * sum(8 * o * i for o, i in plastic)
    return float(flops), float(bytes_)


def plain_bmm(model: ModelSpec, b: int, m: int, steps: int, *, device: str | torch.device = "cpu",
              layout: str = "column") -> Callable[[], None]:
    """A function that runs the matmuls of ``steps`` lifetime steps of ``b`` lifetimes and nothing else:
    per step and layer one forward bmm ``[b, m, in] x [b, in, out]``, per plastic layer one outer-product
    bmm (``[b, in, m] x [b, m, out]``, or ``[b, out, m] x [b, m, in]`` for ``layout="row"``), into
    preallocated outputs. Its FLOP per call equal
    ``b * lifetime_cost(model, steps, m)[0]``.

    ``layout``: ``"column"`` stores each weight as ``[b, in, out]`` (the lifetime's layout, contiguous
    operands), ``"row"`` as ``[b, out, in]`` (the forward reads it through a transposed view)."""
    if layout not in ("row", "column"):
        raise ValueError(f"layout must be 'row' or 'column', not {layout!r}")
    shapes = _layers(model)
    plastic = set(model.plastic_layers)
    ws = [torch.randn(b, o, i, device=device).transpose(1, 2) if layout == "row" else
          torch.randn(b, i, o, device=device) for o, i in shapes]               # [b, in, out] (a view for row)
    xs = [torch.randn(b, m, i, device=device) for _, i in shapes]
    posts = [torch.randn(b, m, o, device=device) for o, _ in shapes]
    outs = [torch.empty(b, m, o, device=device) for o, _ in shapes]
    row = layout == "row"
    grads = [torch.empty(b, o, i, device=device) if row else torch.empty(b, i, o, device=device) for o, i in shapes]

    def run() -> None:
        for _ in range(steps):
            for l in range(len(ws)):
                torch.bmm(xs[l], ws[l], out=outs[l])
                if l + 1 in plastic:        # the update in the weight's own layout
                    if row:
                        torch.bmm(posts[l].transpose(1, 2), xs[l], out=grads[l])
                    else:
                        torch.bmm(xs[l].transpose(1, 2), posts[l], out=grads[l])

    return run


def plain_bmm_seconds_per_step(model: ModelSpec, b: int, m: int, device: str | torch.device = "cpu", *,
                               steps: int = 40, reps: int = 3, layout: str = "column") -> float:
    """Median seconds per step of :func:`plain_bmm`; on a GPU the faster of eager and a CUDA graph."""
    run = plain_bmm(model, b, m, steps, device=device, layout=layout)
    best = median_seconds(run, reps=reps, device=device)
    if torch.device(device).type == "cuda":
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            run()
        best = min(best, median_seconds(graph.replay, reps=reps, device=device))
    return best / steps


def copy_bytes_per_second(numel: int, device: str | torch.device = "cpu", *, reps: int = 3) -> float:
    """Bytes per second of a plain fp32 copy of ``numel`` numbers (4 read + 4 written per number)."""
    src = torch.randn(numel, device=device)
    dst = torch.empty_like(src)
    seconds = median_seconds(lambda: [dst.copy_(src) for _ in range(5)], reps=reps, device=device) / 5
    return 8.0 * numel / seconds
