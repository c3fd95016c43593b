"""Run a script of ``scripts/`` in this process, as its ``__main__`` would, without ~20 s of start-up.

``run(name, argv)`` calls ``evoplast.cli.run_main(lambda: main(argv))`` and returns the exit code that
``python scripts/<name>.py ARGV`` would have ended with (0, 1 world, 2 bad command line / config, 130
interrupted); what the script printed is left for ``capsys``. Subprocesses stay for what only a real
process shows (signals, start-up time, a server), and are marked ``slow``.
"""

from __future__ import annotations

import importlib.util
from types import ModuleType

from .conftest import REPO

_modules: dict[str, ModuleType] = {}


def load(name: str) -> ModuleType:
    """``scripts/<name>.py`` as a module (loaded once per test session; ``main`` is not run)."""
    if name not in _modules:
        spec = importlib.util.spec_from_file_location(f"evoplast_script_{name}", f"{REPO}/scripts/{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _modules[name] = module
    return _modules[name]


def run(name: str, argv: list[str]) -> int:
    """The exit code of ``scripts/<name>.py argv``, run in this process."""
    from evoplast.cli import run_main

    module = load(name)
    try:
        run_main(lambda: module.main(list(argv)))
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    raise AssertionError("run_main returned without exiting")   # it always ends with sys.exit


def error_line(err: str) -> str:
    """The one line of ``err`` that evoplast wrote (MLflow and Ray may log lines of their own); fails the
    test when there is none, more than one, or a traceback."""
    lines = [line for line in err.splitlines() if line.startswith("evoplast:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    return lines[0]


__all__ = ["error_line", "load", "run"]
