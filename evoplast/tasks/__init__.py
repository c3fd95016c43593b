"""Task families. A task builds :class:`Episodes` from seeds; the lifetime consumes them."""

from .episodes import Episodes
from .sinusoid import SinusoidTask

__all__ = ["Episodes", "SinusoidTask", "make_task"]


def make_task(task_cfg):
    """The task object for a :class:`evoplast.config.TaskConfig`."""
    if task_cfg.name == "sinusoid":
        return SinusoidTask(task_cfg)
    from .classification import ClassificationTask

    return ClassificationTask(task_cfg)
