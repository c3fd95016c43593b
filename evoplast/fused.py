"""A fused CPU kernel for one in-place lifetime step of the plastic network (no-grad path only).

:meth:`evoplast.learners.PlasticLearner.step_and_predict` with ``inplace=True`` runs ~35 small PyTorch
ops per step; at small layers their per-op and per-matrix overhead dominates. :func:`bind` gives the
same step as one C++ call: each lifetime's forward pass, teaching signal, feedback and Hebb / Oja update
run back to back while its data sits in L1/L2, and lifetimes are spread over threads with
``at::parallel_for`` (it follows ``torch.set_num_threads``). The C++ source, ``evoplast/csrc/fused_step.cpp``, is compiled at
first use with ``torch.utils.cpp_extension.load`` (``-O3 -march=native -Wall -Wextra``, no fast-math, so NaN / Inf
propagate as in eager) into torch's extension cache (``~/.cache/torch_extensions`` or
``$TORCH_EXTENSIONS_DIR``); :func:`available` says whether that worked.

Shapes (B lifetimes, L layers of sizes ``(n_0, ..., n_L)``, m rows per mini-batch, ``n_out = n_L``):

    weights   L tensors ``W_l [B, out_l, in_l]`` float32, column-major (``W_l.transpose(1, 2)``
              contiguous, see :func:`evoplast.network.column_major`); the plastic ones are updated in place
    biases    L tensors ``[B, out_l]`` (never updated)
    x         ``[B, m, n_0]``; y ``[B, m, n_out]`` float (regression) or ``[B, m]`` int64 (classification).
              Any batch stride, 0 included (one episode shared by all lifetimes, no copy)
    params    for each plastic layer l: ``layer{l}.feedback [B, out_l, n_out]``, ``layer{l}.feedback_bias
              [B, out_l]``, ``layer{l}.beta [B, 1, 1]``, ``layer{l}.eta [B, 1, 1]`` (per layer) or
              ``[B, out_l, 1]`` (per neuron)
    returns   ``y_hat [B, m, n_out]``, the prediction of the pre-update weights (a new tensor)

Callers check :func:`supports` (the model) and :func:`available` (the compiler) first; a bound step
raises ``ValueError`` for anything else it cannot do (a row-major weight, a per-synapse eta, wrong
shapes or dtypes). A lifetime's result depends only on its own data: not on the other lifetimes in the
batch nor on the number of threads (bit for bit).

Speed (2-core Ice Lake VM, same-process medians, oja on every layer): sizes 11-40-40-1, m = 8, B = 256:
~0.4-0.6 ms per step against ~1.4-1.6 ms eager (2.5-3.4x), B = 64: 3-5x; sizes 11-300-300-1, m = 32:
1.15-1.3x at B = 16 (the eager step is MKL-GEMM bound there), 2x at B = 1. The first call of
:func:`available` compiles for ~20 s; later processes load the cached build in ~0.15 s.
"""

from __future__ import annotations

import hashlib
import platform
import sys
import threading
import time
import warnings
from pathlib import Path

from typing import Callable

from torch import Tensor

from .network import ModelSpec

__all__ = ["available", "bind", "supports"]

_SOURCE = Path(__file__).resolve().parent / "csrc" / "fused_step.cpp"

_lock = threading.Lock()
_module = None              # the compiled extension, once built
_status: bool | None = None  # None: not tried yet


def _extension_name() -> str:
    """A name per CPU and per checkout: ``-march=native`` code must not be reused on another machine sharing
    the cache, and two checkouts on one machine (their build files name their own source) would otherwise
    rebuild it in turn, each time the other one ran."""
    cpu = platform.machine() + platform.processor() + str(_SOURCE)
    try:
        with open("/proc/cpuinfo") as f:
            cpu += "".join(sorted({line for line in f if line.startswith(("model name", "flags"))}))
    except OSError:
        pass
    return "evoplast_fused_" + hashlib.sha1(cpu.encode()).hexdigest()[:10]


def _reason(exc: BaseException) -> str:
    """A few words on why the build failed: the compiler's first error line when there is one."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower() and not line.startswith("Error building")]
    text = (errors or lines or [""])[0]
    return f"{type(exc).__name__}: {text[-160:]}"


def _build_dir(name: str) -> Path | None:
    """Torch's extension cache directory for ``name`` (None if torch's private helper moved)."""
    try:
        from torch.utils.cpp_extension import _get_build_directory

        return Path(_get_build_directory(name, verbose=False))
    except Exception:  # noqa: BLE001 - a private helper of torch
        return None


def _is_built(name: str) -> bool:
    """Whether torch's extension cache already holds a build of ``name`` (then loading takes ~0.2 s)."""
    directory = _build_dir(name)
    try:
        return directory is None or any(f.suffix == ".so" for f in directory.iterdir())
    except OSError:      # no directory yet: never built
        return False


def _build_lock(name: str) -> Path | None:
    """The lock file torch's extension cache holds while ``name`` builds (None if torch's helper moved)."""
    directory = _build_dir(name)
    return None if directory is None else directory / "lock"


STALE_LOCK_SECONDS = 600   # a build takes ~20-60 s; a lock this old was left by a compile that was killed


def clear_stale_lock(name: str, *, max_age: float = STALE_LOCK_SECONDS) -> bool:
    """Remove the build lock of extension ``name`` when it is older than ``max_age`` seconds.

    torch's extension cache serialises builds with a ``lock`` file in the build directory and waits on it
    without a timeout; a compile killed mid-way (Ctrl-C, a killed test, a lost node) leaves it behind and
    every later process would wait forever. Returns whether a lock was removed (and says so on stderr)."""
    try:
        lock = _build_lock(name)
        age = time.time() - lock.stat().st_mtime
    except Exception:  # noqa: BLE001 - no lock (the usual case), or torch's private helper changed
        return False
    if age <= max_age:
        return False
    try:
        lock.unlink()
    except OSError:
        return False
    print(f"evoplast: removed a stale build lock {lock} ({age / 60:.0f} min old, left by a compile that was "
          f"interrupted)", file=sys.stderr, flush=True)
    return True


def available() -> bool:
    """Whether the kernel can run here: compiles it on the first call (seconds; cached by torch on disk
    afterwards). On failure warns once, saying why, and returns False; never raises."""
    global _module, _status
    if _status is None:
        with _lock:
            if _status is None:
                try:
                    from torch.utils.cpp_extension import load

                    clear_stale_lock(_extension_name())
                    lock = _build_lock(_extension_name())
                    if lock is not None and lock.exists():
                        print(f"evoplast: waiting for the fused CPU kernel's build that another process started "
                              f"(if none runs, delete {lock})", file=sys.stderr, flush=True)
                    elif not _is_built(_extension_name()):
                        print("evoplast: compiling the fused CPU kernel (once per machine and checkout, ~20 s)",
                              file=sys.stderr, flush=True)
                    _module = load(_extension_name(), sources=[str(_SOURCE)],
                                   extra_cflags=["-O3", "-march=native", "-fopenmp", "-Wall", "-Wextra"],
                                   extra_ldflags=["-fopenmp"], verbose=False)
                    _status = True
                except Exception as exc:  # noqa: BLE001 - no compiler, no ninja, a build error...
                    warnings.warn(f"evoplast.fused: the fused CPU kernel is unavailable ({_reason(exc)})",
                                  RuntimeWarning, stacklevel=2)
                    _status = False
    return _status


def supports(spec: ModelSpec) -> bool:
    """Whether the kernel covers the model ``spec``: hebb or oja, no feature stack, regression or
    classification, any sizes and plastic layers. (The eta granularity is a property of the params:
    per layer and per neuron are covered, per synapse is not; the bound step checks.)"""
    L = spec.num_layers
    return (spec.rule in ("hebb", "oja") and spec.features == "none" and L >= 1
            and not getattr(spec, "count_normalised", False) and not getattr(spec, "gated", False)
            and spec.kind in ("regression", "classification")
            and spec.teaching_signal in ("error", "target")
            and spec.feedback_activation in ("relu", "linear")
            and all(n >= 1 for n in spec.sizes)
            and all(1 <= l <= L for l in spec.plastic_layers)
            and list(spec.plastic_layers) == sorted(set(spec.plastic_layers)))


def bind(spec: ModelSpec) -> Callable[..., Tensor]:
    """One in-place lifetime step of B lifetimes for the model ``spec``, with everything that depends only on
    ``spec`` worked out once: ``bind(spec)(params, weights, biases, x, y) -> y_hat [B, m, n_out]`` (the
    prediction of the pre-update weights; the plastic layers' ``weights`` are updated in place). Equals
    ``PlasticLearner(spec).step_and_predict(params, NetState(weights, biases), x, y, inplace=True)`` up to
    float rounding (shapes in the module docstring).

    Raises ``ValueError`` when the model is not covered (:func:`supports`); the step raises ``ValueError``
    for a row-major weight, a per-synapse eta or a wrong shape / dtype, and ``RuntimeError`` when the kernel
    is not :func:`available`."""
    if not supports(spec):
        raise ValueError(f"the fused kernel does not cover this model (rule {spec.rule!r}, features "
                         f"{spec.features!r}, kind {spec.kind!r}); check evoplast.fused.supports first")
    plastic = list(spec.plastic_layers)
    names = tuple(tuple(f"layer{l}.{n}" for l in plastic) for n in ("feedback", "feedback_bias", "beta", "eta"))
    flags = (spec.rule == "oja", spec.teaching_signal == "target", spec.feedback_activation == "relu",
             spec.kind == "classification")

    def step(params: dict[str, Tensor], weights, biases, x: Tensor, y: Tensor) -> Tensor:
        if _module is None and not available():
            raise RuntimeError("the fused kernel is unavailable (see the warning from evoplast.fused.available)")
        fb, fbias, beta, eta = ([params[n] for n in group] for group in names)
        return _module.step(list(weights), list(biases), x, y, plastic, fb, fbias, beta, eta, *flags)

    return step
