"""Progress of a long loop (generations, meta-steps): elapsed time, ETA, the best so far, the latest held-out.

In a terminal (the stream is a TTY) one line is redrawn in place (``\\r``) as a bar; to a file or a cluster
log, plain lines every ``every`` steps (and at the last), so a log stays readable and greppable.
Lines that must stay (a held-out evaluation, a warning) go through :meth:`Progress.note`, which keeps the
bar below them.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Optional, TextIO


def format_seconds(seconds: float) -> str:
    """``75 -> "1:15"``, ``3725 -> "1:02:05"``; unknown (NaN, inf) -> ``"?"``."""
    if seconds != seconds or seconds in (float("inf"), float("-inf")) or seconds < 0:
        return "?"
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """``update(step, **values)`` after each step of ``total``; ``note(text)`` for a line that stays;
    ``close()`` at the end.

    Args:
        total: the last step (e.g. ``search.generations``).
        what: the step's name in the line (``"gen"``, ``"meta-step"``).
        stream: where to write (default ``sys.stdout``); a TTY gets the bar.
        every: plain mode writes a line every ``every`` steps (and the last); 0 = about 20 lines.
        tty: force the mode (default: ``stream.isatty()``).
        start: the step the loop starts from (a resumed run): the ETA uses the steps done since.
        clock: ``time.monotonic`` (tests pass a fake).
    """

    width = 24

    def __init__(self, total: int, what: str = "gen", *, stream: Optional[TextIO] = None, every: int = 0,
                 tty: Optional[bool] = None, start: int = 0, clock=time.monotonic):
        self.total = max(1, int(total))
        self.what = what
        self.stream = stream or sys.stdout
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)()) if tty is None else tty
        self.every = every or max(1, self.total // 20)
        self.start = start
        self.clock = clock
        self.t0 = clock()
        self._drawn = False          # a bar is on the current line (TTY)
        self.last_line = ""

    def eta(self, step: int) -> float:
        """Seconds left: the mean time per step since the start, times the steps left."""
        done = step - self.start
        if done <= 0:
            return float("nan")
        return (self.clock() - self.t0) / done * (self.total - step)

    def line(self, step: int, values: dict[str, str]) -> str:
        """``gen   40/1000 | best so far -1.39 | ... | elapsed 0:12 | ETA 4:48``."""
        elapsed = self.clock() - self.t0
        return " | ".join([f"{self.what} {step:4d}/{self.total}", *(f"{k} {v}" for k, v in values.items()),
                           f"elapsed {format_seconds(elapsed)}", f"ETA {format_seconds(self.eta(step))}"])

    def update(self, step: int, values: dict[str, str], last: Optional[int] = None) -> None:
        """Show step ``step`` with ``values`` (already formatted, e.g. ``{"best so far": "-1.39"}``); ``last``:
        the step the loop stops at when that is before ``total`` (plain mode writes it too)."""
        if self.tty:
            filled = int(self.width * step / self.total)
            bar = "█" * filled + "·" * (self.width - filled)
            text = f"[{bar}] {self.line(step, values)}"
            self.stream.write("\r" + text + "\x1b[K")
            self._drawn = True
            if step >= (last or self.total):
                self.stream.write("\n")
                self._drawn = False
            self.stream.flush()
            self.last_line = text
        elif step % self.every == 0 or step >= (last or self.total):
            self.last_line = self.line(step, values)
            self.stream.write(self.last_line + "\n")
            self.stream.flush()

    def note(self, text: str) -> None:
        """A line that stays (held-out evaluations, checkpoints): written above the bar."""
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self._drawn = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False


def quiet_libraries() -> None:
    """Keep the start-up chatter of Ray, EvoTorch and MLflow (their INFO lines) out of the terminal;
    their warnings and errors still show."""
    import os

    os.environ.setdefault("EVOTORCH_VERBOSE_LEVEL", "0")      # read when evotorch is first imported
    for name in ("ray", "evotorch", "mlflow", "alembic", "urllib3"):   # and where it was imported already
        logging.getLogger(name).setLevel(logging.WARNING)
    # system metrics are best-effort: a sample lost to a busy sqlite store or a lost server is not worth a
    # warning (a lost server is reported by the run itself, in one line)
    logging.getLogger("mlflow.system_metrics").setLevel(logging.ERROR)
    # a store that fails (locked, full, read-only) raises, and evoplast.runs.tracking answers it in one line: MLflow's
    # own ERROR lines and tracebacks about the same failure would only bury that line
    for name in ("mlflow.store", "mlflow.tracking._tracking_service", "mlflow.utils.rest_utils", "sqlalchemy"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


class LineStream:
    """A stream over a line callback (``print``-like ``out``): what is written is passed on line by line."""

    def __init__(self, out):
        self.out = out
        self._buf = ""

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> None:
        self._buf += text
        while "\n" in self._buf:
            line, self._buf = self._buf.split("\n", 1)
            self.out(line)

    def flush(self) -> None:
        pass
