"""Command-line plumbing shared by the scripts: ``--config``, ``key=value`` overrides, one-line errors."""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from .checkpoint import CheckpointError
from .config import ConfigError, load_config
from .export import RuleExportError
from .runs import RunArtifactsError
from .tasks.images import DatasetError
from .tracking import TrackingUnavailable


class UsageError(ValueError):
    """A bad command line (exit code 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, like every other bad input
        raise UsageError(f"{message} (see {self.prog} --help)")


def parser(description: str, prog: str | None = None) -> argparse.ArgumentParser:
    p = _Parser(description=description, prog=prog,
                epilog="Overrides: dotted key=value pairs applied after the YAML file, e.g. "
                       "network.hidden=[64,64] rule.name=oja search.generations=50")
    p.add_argument("--config", default=None, help="experiment YAML (default: configs/default.yaml)")
    p.add_argument("overrides", nargs="*", help="key=value overrides")
    return p


def config_from_args(args, default_path: str | None) -> "object":
    return load_config(args.config or default_path, args.overrides)


def run_main(main: Callable[[], int | None]) -> None:
    """Run ``main``; known bad input ends with one line on stderr and exit 2 (usage/config) or 1."""
    try:
        code = main()
    except (UsageError, ConfigError) as exc:
        print(f"evoplast: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except (TrackingUnavailable, CheckpointError, RunArtifactsError, RuleExportError, DatasetError) as exc:
        print(f"evoplast: error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("evoplast: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:  # Ray's errors are imported lazily
        from .evolution.ray_pool import ActorsLost, RayUnavailable

        if isinstance(exc, (RayUnavailable, ActorsLost)):
            print(f"evoplast: error: {exc}", file=sys.stderr)
            sys.exit(1)
        raise
    sys.exit(code or 0)
