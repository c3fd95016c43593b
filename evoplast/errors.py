"""Exception classes of bad input, in a module that imports nothing (scripts check input before heavy imports)."""


class ConfigError(ValueError):
    """A configuration problem, described in one line that says how to fix it (exit code 2)."""


class UsageError(ValueError):
    """A bad command line (exit code 2)."""


class StoreNotFound(RuntimeError):
    """The MLflow store a run id is to be read from does not exist (exit code 1); nothing is created."""
