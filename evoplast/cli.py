"""Command-line plumbing shared by the scripts: one convention, one-line errors.

Every script takes ``--config PATH``, positional ``key=value`` overrides, ``--tracking-uri URI`` (sets
``tracking.tracking_uri``; wins over ``$MLFLOW_TRACKING_URI``), ``--help-config`` (every config key, one line
each) and, where a run is read, ``--run-id RUN``. This module imports only :mod:`evoplast.config` (no torch,
Ray, MLflow or EvoTorch), so a bad command line or config is answered before the heavy imports.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable

from .config import Config, help_text, load_config
from .errors import ConfigError, EvoplastError, StoreNotFound, UsageError

__all__ = ["UsageError", "ConfigError", "parser", "config_from_args", "run_main", "DEFAULT_CONFIG"]

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"



class _Once(argparse._StoreAction):
    """A single-valued option given twice (``--config a.yaml --config b.yaml``) is refused, not "the last wins"."""

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string is not None:
            given = namespace.__dict__.setdefault("_evoplast_given", {})
            if self.dest in given:
                parser.error(f"{option_string} is given twice ({given[self.dest]!r} and {values!r}); give it once")
            given[self.dest] = values
        super().__call__(parser, namespace, values, option_string)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register("action", None, _Once)        # every single-valued option of every script (and group)
        self.register("action", "store", _Once)

    def error(self, message: str):  # one line, exit 2, like every other bad input
        raise UsageError(f"{message} (see {self.prog} --help)")

    def parse_args(self, args=None, namespace=None):
        parsed = super().parse_args(args, namespace)
        parsed.__dict__.pop("_evoplast_given", None)
        return parsed


def count(text: str) -> int:
    """An argparse ``type`` for a count: an integer >= 0 (``--print-every -1`` is refused, not read as 'never')."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid count {text!r}: expected an integer >= 0") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"invalid count {text!r}: expected an integer >= 0")
    return value


class _HelpConfig(argparse.Action):
    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="print every config key (key = default  (allowed)  help) and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        sys.stdout.write(help_text())
        parser.exit(0)


def parser(description: str, prog: str | None = None, *, config: bool = True, run_id: str | None = None,
           tracking: bool = True) -> argparse.ArgumentParser:
    """The scripts' parser. ``config``: take ``--config`` and ``key=value`` overrides; ``run_id``: the help
    of ``--run-id`` (None: no such option); ``tracking``: take ``--tracking-uri``."""
    p = _Parser(description=description, prog=prog,
                epilog="Overrides: dotted key=value pairs applied after the YAML file, e.g. "
                       "network.hidden=[64,64] rule.name=oja search.generations=50; every key: --help-config "
                       "or docs/configuration.md")
    if config:
        p.add_argument("--config", default=None, metavar="PATH",
                       help="experiment YAML (default: the defaults, which configs/default.yaml holds)")
        p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.add_argument("--help-config", action=_HelpConfig)
    if run_id is not None:
        p.add_argument("--run-id", metavar="RUN", help=run_id)
    if tracking:
        p.add_argument("--tracking-uri", metavar="URI",
                       help="MLflow store (sets tracking.tracking_uri; wins over $MLFLOW_TRACKING_URI; "
                            "default sqlite:///mlflow.db)")
    return p


def config_from_args(args, default_path: str | Path | None = None) -> Config:
    """The config the command line names: ``--config`` (else ``default_path``, else the defaults), the
    ``key=value`` overrides, then ``--tracking-uri``."""
    overrides = list(getattr(args, "overrides", []) or [])
    uri = getattr(args, "tracking_uri", None)
    if uri is not None:
        overrides.append(f"tracking.tracking_uri={uri}")
    cfg = load_config(getattr(args, "config", None) or default_path, overrides)
    if uri is not None and cfg.tracking.tracking_uri != uri:          # a URI that YAML would read as a mapping
        cfg = cfg.replace(**{"tracking.tracking_uri": uri})
    return cfg


def apply_tracking_uri(args) -> None:
    """For scripts that read runs without a config: ``--tracking-uri`` becomes ``$MLFLOW_TRACKING_URI``."""
    if getattr(args, "tracking_uri", None):
        os.environ["MLFLOW_TRACKING_URI"] = args.tracking_uri


def require_store(uri: str, run_id: str) -> None:
    """Before a run id is looked up: a sqlite store whose file does not exist is one line (and is not created,
    as MLflow would do, leaving an empty mlflow.db behind)."""
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        if not path.is_file():
            raise StoreNotFound(f"run {run_id!r}: no MLflow store at sqlite:///{path.resolve()} (the file does not "
                                f"exist); point at the store that holds the run with --tracking-uri URI or "
                                f"MLFLOW_TRACKING_URI")


def run_main(main: Callable[[], int | None]) -> None:
    """Run ``main``; known bad input ends with one line on stderr and exit 2 (usage/config) or 1 (the world)."""
    try:
        code = main()
    except EvoplastError as exc:      # UserError (exit 2: change the command) or WorldError (exit 1: retry)
        print(f"evoplast: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("evoplast: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
