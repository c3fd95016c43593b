"""Outer trainers head to head at equal wall-clock: the engine of ``python scripts/benchmark.py outer``.

A run builds one trainer from scratch (the spec's initial genome), steps it until the budget of seconds
is spent — CPU seconds of this process (``time.process_time``), which with one thread equal wall-clock
on an idle core and, unlike wall-clock, do not depend on what else the shared machine runs — and measures on the regime's held-out episodes the recommended genome's query loss and its
episode-specific gain. Held-out evaluations along the way (for the curve) pause the clock. The peak
memory of one more step is read afterwards from the kernel (``VmHWM`` after resetting it through
``/proc/self/clear_refs``), with glibc told to return freed blocks, so that it follows what a step
really holds.
"""

from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass, field
from typing import Callable, Optional


from ..config import Config, from_dict, merge_overrides, to_yaml

# method -> (trainer, config overrides, constructor arguments given the lifetime's length T and the budget)
Method = tuple[str, list[str], Callable[[int, float], dict]]


def methods() -> dict[str, Method]:
    """The compared methods. BPTT's learning rate 0.01 is the issue's from-scratch setting; PES's unroll is
    min(T, 100) steps (the whole lifetime at T = 100, so there it is antithetic ES with Adam); truncated
    BPTT's window is T/10 (one sinusoid of the blocked stream)."""
    return {
        "ES (PGPE, P=32)": ("es", ["search.popsize=32"], lambda T, b: {}),
        "ES (PGPE, P=256)": ("es", ["search.popsize=256"], lambda T, b: {}),
        "BPTT full": ("bptt", [], lambda T, b: {"lr": 0.01}),
        "BPTT full (lr 0.001)": ("bptt", [], lambda T, b: {"lr": 0.001}),     # for large rates (eta x16)
        "BPTT truncated": ("bptt", [], lambda T, b: {"lr": 0.01, "window": max(1, T // 10)}),
        "BPTT checkpointed": ("bptt", [], lambda T, b: {"lr": 0.01, "checkpoint": True}),
        "PES": ("pes", [], lambda T, b: {"pairs": 64, "sigma": 0.1, "window": min(T, 100), "lr": 0.02}),
        # noise-reuse ES (trainers/nres.py): one ε per particle for a lifetime, truncations of one sinusoid
        "NRES": ("nres", [], lambda T, b: {"pairs": 32, "sigma": 0.1, "window": max(1, T // 10), "lr": 0.02}),
        # for large plasticity rates (eta x16): a perturbation and a step that keep most particles finite
        "NRES (small steps)": ("nres", [], lambda T, b: {"pairs": 32, "sigma": 0.01, "window": max(1, T // 10),
                                                         "lr": 0.002}),
        "hybrid (ES 1/2, then BPTT)": ("hybrid", ["search.popsize=32"],
                                       lambda T, b: {"es_seconds": b / 2, "lr": 0.01}),
        "hybrid (ES 1/8, then BPTT)": ("hybrid", ["search.popsize=32"],      # the split the default uses
                                       lambda T, b: {"es_seconds": b / 8, "lr": 0.01}),
    }


def method_of(name: str) -> Method:
    """A method of :func:`methods`, or ``"ES (PGPE, P=<n>)"`` for any population size n (the population
    sweep of ``benchmark.py outer --popsizes``)."""
    import re

    if name in methods():
        return methods()[name]
    m = re.fullmatch(r"ES \(PGPE, P=(\d+)\)", name)
    if m is None:
        raise KeyError(f"unknown method {name!r}")
    return ("es", [f"search.popsize={int(m.group(1))}"], lambda T, b: {})


def describe(name: str, T: int) -> str:
    """How a method is set up at lifetime length T, for the table's notes."""
    trainer, overrides, kwargs = method_of(name)
    kw = kwargs(T, 1.0)
    kw.pop("es_seconds", None)
    return ", ".join(overrides + [f"{k}={v}" for k, v in kw.items()])


@dataclass
class RunResult:
    method: str
    seed: int
    steps: int
    seconds: float                       # CPU seconds of the steps (the budget, plus the last step's overrun)
    lifetimes: float                     # lifetimes' worth of work done
    loss: float                          # held-out query loss of best() at the end
    episode_gain: float
    peak_mb: float                       # peak memory of one step above the RSS before it
    curve: list[tuple[float, float]] = field(default_factory=list)   # (seconds, held-out loss)


def run_method(name: str, cfg: Config, budget: float, *, curve_points: int = 2, method: Optional[Method] = None,
               on_step: Optional[Callable[[dict], None]] = None,
               clock: Callable[[], float] = time.process_time) -> RunResult:
    """Run method ``name`` of :func:`methods` (or ``method``, a variant) on ``cfg`` for ``budget`` seconds of steps."""
    from ..evaluation import Evaluator
    from ..trainers import make_trainer

    kind, overrides, kwargs = method or method_of(name)
    if overrides:
        cfg = with_overrides(cfg, overrides)
    ev = Evaluator(cfg)
    T = cfg.task.num_tasks * cfg.task.batches_per_task
    trainer = make_trainer(kind, cfg, **kwargs(T, budget))
    elapsed, steps, lifetimes = 0.0, 0, 0.0
    marks = [budget * (i + 1) / (curve_points + 1) for i in range(curve_points)]
    curve = [(0.0, ev.score(trainer.best().reshape(1, -1)).loss.item())]
    while elapsed < budget:
        t0 = clock()
        m = trainer.step()
        elapsed += clock() - t0
        steps += 1
        lifetimes += m["lifetimes"]
        if on_step is not None:
            on_step(m)
        while marks and elapsed >= marks[0]:                   # clock paused: not part of the budget
            marks.pop(0)
            curve.append((elapsed, ev.score(trainer.best().reshape(1, -1)).loss.item()))
    best = trainer.best()
    h = ev.learning_measures(best)
    curve.append((elapsed, h["loss"]))
    peak = step_peak_mb(trainer.step)
    return RunResult(name, cfg.seed, steps, elapsed, lifetimes, h["loss"], h["episode_gain"], peak, curve)


def step_peak_mb(fn: Callable[[], object]) -> float:
    """Peak resident memory of ``fn()`` above the resident memory before it, in MB (Linux; NaN elsewhere)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        with open("/proc/self/clear_refs", "w") as f:
            pass
    except OSError:
        fn()
        return float("nan")
    from .. import malloc as runtime

    libc.mallopt(-3, 64 * 1024)          # M_MMAP_THRESHOLD: large blocks are unmapped when freed
    libc.mallopt(-1, 128 * 1024)         # M_TRIM_THRESHOLD: the heap's free top goes back to the OS
    libc.malloc_trim(0)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")                                         # reset VmHWM to the current RSS
        before = _status_kb("VmRSS")
        fn()
        peak = _status_kb("VmHWM")
    finally:
        if runtime._applied:                                      # restore what reuse_freed_memory set
            libc.mallopt(-3, runtime.MMAP_THRESHOLD)
            libc.mallopt(-1, runtime.TRIM_THRESHOLD)
    return max(0.0, (peak - before) / 1024)


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise OSError(f"{key} not in /proc/self/status")


def parse_regime(base: Config, regime: str) -> tuple[int, float]:
    """``(mini-batches per sinusoid, multiple of rule.eta_scale)`` of a regime: ``default`` (the config's),
    ``long`` (10x the mini-batches: 1,000 steps at the default), or ``T<steps>`` with an optional
    ``-eta<k>`` (``T4000-eta16``: lifetimes of 4,000 steps, plasticity rate scale x16, the regimes of
    ``scripts/bench_gradnorm.py``)."""
    import re

    if regime == "default":
        return base.task.batches_per_task, 1.0
    if regime == "long":
        return base.task.batches_per_task * 10, 1.0
    m = re.fullmatch(r"T(\d+)(?:-eta(\d+(?:\.\d+)?))?", regime)
    if m is None or int(m.group(1)) % base.task.num_tasks:
        raise ValueError(f"unknown regime {regime!r}: expected 'default', 'long' or T<steps>[-eta<k>] with steps a "
                         f"multiple of task.num_tasks ({base.task.num_tasks})")
    return int(m.group(1)) // base.task.num_tasks, float(m.group(2) or 1.0)


def regime_steps(base: Config, regime: str) -> int:
    """Lifetime steps T of a regime."""
    return base.task.num_tasks * parse_regime(base, regime)[0]


def regime_config(base: Config, regime: str, seed: int) -> Config:
    """The config of a regime (:func:`parse_regime`), in-process, with the run's seed."""
    per_task, eta = parse_regime(base, regime)
    overrides = ["ray.num_actors=0", f"seed={seed}"]
    if per_task != base.task.batches_per_task:
        overrides.append(f"task.batches_per_task={per_task}")
    if eta != 1.0:
        overrides.append(f"rule.eta_scale={base.rule.eta_scale * eta:g}")
    return with_overrides(base, overrides)


def with_overrides(cfg: Config, overrides: list[str]) -> Config:
    """``cfg`` with ``key=value`` overrides applied and checked (as on the command line)."""
    import yaml

    return from_dict(merge_overrides(yaml.safe_load(to_yaml(cfg)), overrides))
