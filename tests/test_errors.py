"""One error hierarchy: every error a script can end with is a UserError (exit 2) or a WorldError (exit 1)."""

import importlib
import inspect

import pytest

from evoplast.cli import run_main
from evoplast.errors import EvoplastError, UserError, WorldError

from .test_layers import _modules

# errors that never reach a script: each is turned into one of evoplast's own where it is raised
INTERNAL = {"UnsafePt2": "safe_pt2 is standard-library only (copied next to torch-only scripts); "
                         "scripts/check_rule.py turns it into a UsageError",
            "RuleDataError": "load_rule turns it into RuleExportError", "_StopAfter": "a test hook",
            "EvoplastError": "the root of the two kinds"}


def test_every_error_class_of_evoplast_is_a_user_or_a_world_error():
    stray = []
    for name in _modules():
        module = importlib.import_module("evoplast" if name == "evoplast" else f"evoplast.{name}")
        for cls_name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module.__name__ and issubclass(cls, Exception) and cls_name not in INTERNAL \
                    and not issubclass(cls, (UserError, WorldError)):
                stray.append(f"{module.__name__}.{cls_name}")
    assert not stray, stray


@pytest.mark.parametrize("error, code", [(UserError("bad flag"), 2), (WorldError("store down"), 1)])
def test_run_main_gives_each_kind_its_exit_code_and_one_line(error, code, capsys):
    def main():
        raise error

    with pytest.raises(SystemExit) as info:
        run_main(main)
    assert info.value.code == code and capsys.readouterr().err == f"evoplast: error: {error}\n"


def test_anything_else_is_not_hidden():
    """A bug is a traceback, not a one-line 'error' that hides it."""
    with pytest.raises(KeyError):
        run_main(lambda: {}["missing"])
    assert issubclass(UserError, EvoplastError) and not issubclass(KeyError, EvoplastError)
