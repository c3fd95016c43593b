"""The errors evoplast answers in one line, in a module that imports nothing (scripts check input before
heavy imports). Two kinds, and the exit code each gets from a script (``evoplast.cli.run_main``):

- :class:`UserError` (exit 2): the command line, the config or an input the user gave is wrong; the same
  command will fail again until the user changes it;
- :class:`WorldError` (exit 1): the command is right but the world did not let it run (a store, a disk, a
  cluster, a file that is damaged or busy); the same command may work later.

Every module's own error class derives from one of them, so a script needs no table of names.
"""


class EvoplastError(Exception):
    """An error evoplast describes in one line."""

    exit_code = 1


class UserError(EvoplastError, ValueError):
    """Bad input from the user (exit code 2)."""

    exit_code = 2


class WorldError(EvoplastError, RuntimeError):
    """The world stopped a right command (exit code 1)."""

    exit_code = 1


class ConfigError(UserError):
    """A configuration problem, described in one line that says how to fix it (exit code 2)."""


class UsageError(UserError):
    """A bad command line (exit code 2)."""


class StoreNotFound(WorldError):
    """The MLflow store a run id is to be read from does not exist (exit code 1); nothing is created."""
