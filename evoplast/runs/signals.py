"""SIGINT / SIGTERM for a long run: finish the step in flight, checkpoint, stop (shared by every run loop).

:class:`StopFlag` is a context manager that installs the handlers (main thread only) and puts the old
ones back on exit. While ``immediate`` (set-up, the final report) a signal raises :class:`Interrupted`
at once; inside a loop (``immediate = False``) it only sets ``signal``, so the loop finishes the step
in flight, checkpoints and stops; a second SIGINT interrupts at once.
"""

from __future__ import annotations

import signal
import threading
from typing import Any, Optional


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM at a moment where the run stops at once (set-up, final report, a second SIGINT)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopFlag:
    """The run's stop request: ``signal`` is None until SIGINT/SIGTERM arrives (then its number)."""

    def __init__(self):
        self.signal: Optional[int] = None
        self.immediate = True
        self._old: dict[int, Any] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def reinstall(self) -> None:
        """Take the signals back: ``ray.init`` puts its own SIGTERM handler (which aborts) in the driver."""
        if self._old:
            for sig in self._old:
                signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        first = self.signal is None
        self.signal = signum if first else self.signal
        if self.immediate or (not first and signum == signal.SIGINT):
            raise Interrupted(signum)

    @property
    def name(self) -> str:
        """``"SIGINT"`` / ``"SIGTERM"`` once a signal came, else ``""``."""
        return signal.Signals(self.signal).name if self.signal is not None else ""

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False
