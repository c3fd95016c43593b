#!/usr/bin/env python
"""Every benchmark by name; each is its own file, and prints numbers beside a baseline measured in the same run.

    python scripts/benchmark.py lifetime   # scripts/bench_lifetime.py: batched lifetime vs a per-genome loop vs bmm
    python scripts/benchmark.py evolve     # scripts/bench_evolve.py: generations/s with 0, 1, 2 Ray actors
    python scripts/benchmark.py memory     # scripts/bench_memory.py: peak memory, ES generation vs BPTT meta-step
    python scripts/benchmark.py allocator  # scripts/bench_allocator.py: page faults, reuse_memory off / on
    python scripts/benchmark.py outer      # scripts/bench_outer.py: ES, BPTT, PES, NRES, hybrid at equal CPU time

``python scripts/benchmark.py NAME ARGS`` is ``python scripts/bench_NAME.py ARGS``. The others:
scripts/bench_default.py (the default pipeline against BPTT), bench_scale.py (Ray at scale), bench_gradnorm.py
(the meta-gradient as lifetimes grow), gpu_check.py (GPU throughput).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evoplast.cli import UsageError, parser, run_main  # noqa: E402

NAMES = ("lifetime", "evolve", "memory", "allocator", "outer")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in NAMES:          # --help, --help-config, or a name that is not a benchmark
        p = parser(__doc__.splitlines()[0], "benchmark.py", config=False, tracking=False)
        p.add_argument("which", choices=NAMES)
        p.parse_args(argv[:1] if argv and not argv[0].startswith("-") else argv)
        return 0
    overrides = [a for a in argv[1:] if "=" in a and not a.startswith("-")]
    if argv[0] != "outer" and overrides:
        raise UsageError(f"{argv[0]}: config overrides apply only to the outer benchmark (got {' '.join(overrides)})")
    path = Path(__file__).resolve().parent / f"bench_{argv[0]}.py"
    spec = importlib.util.spec_from_file_location(f"evoplast_bench_{argv[0]}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv[1:])


if __name__ == "__main__":
    run_main(main)
