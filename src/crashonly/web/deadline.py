"""The web process's hard deadline: gone ``grace + MARGIN`` seconds after the first signal.

The drain (server.py) cancels what still runs at the grace period, but cancelling only reaches
code that awaits: an ``async`` handler that calls ``time.sleep(20)`` blocks the event loop, so
the drain itself cannot run, and a WSGI handler runs in a thread that nothing can cancel (the
interpreter waits for such threads at exit). A supervisor expects the process gone after the
grace it was told, so a daemon thread watches the clock from the moment of the signal and, at
the deadline, logs what was still running and ends the process with ``os._exit``. The signal
handler itself only records the time (lifecycle.Shutdown's rule: handlers set events).

A C extension call that holds the GIL for the whole time stops every Python thread, this one too:
only a SIGKILL ends that (``crashonly up`` sends it after ``--timeout``).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable

from ..lifecycle import Shutdown

__all__ = ["MARGIN", "HardDeadline"]

log = logging.getLogger("crashonly.web")

MARGIN = 1.0
"""Seconds past ``--grace`` for the ordinary stop to finish its work (cancel what runs, close
connections, run the lifespan shutdown) before the hard deadline ends the process."""


class HardDeadline:
    """Ends the process ``grace + margin`` seconds after the first SIGTERM/SIGINT (``margin``
    after a second one), whatever the handlers are doing. ``running`` describes, for the log
    line, what was still running."""

    def __init__(self, stop: Shutdown, grace: float, *, margin: float = MARGIN,
                 running: Callable[[], str] = lambda: "") -> None:
        self.stop = stop
        self.grace = grace
        self.margin = margin
        self.running = running
        self.signalled_at: float | None = None  # time.monotonic() of the first signal
        self._immediate_at: float | None = None
        stop.on_signal(self._mark)
        self._thread = threading.Thread(target=self._watch, name="crashonly-deadline",
                                        daemon=True)

    def start(self) -> HardDeadline:
        self._thread.start()
        return self

    def since_signal(self) -> float:
        return time.monotonic() - (self.signalled_at or time.monotonic())

    def _mark(self) -> None:  # runs in the signal handler: record the time, nothing more
        now = time.monotonic()
        if self.signalled_at is None:
            self.signalled_at = now
        elif self._immediate_at is None:
            self._immediate_at = now

    def _watch(self) -> None:
        self.stop.requested.wait()
        started = self.signalled_at or time.monotonic()
        deadline = started + self.grace + self.margin
        while True:
            if self.stop.immediate.is_set():
                deadline = min(deadline, (self._immediate_at or time.monotonic()) + self.margin)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if self.stop.immediate.is_set():
                time.sleep(remaining)
            else:  # wakes early on a second signal, which brings the deadline closer
                self.stop.immediate.wait(remaining)
        what = ""
        try:
            what = self.running()
        except Exception:  # the process is ending either way; the log line must not fail
            pass
        log.warning("hard deadline: still running %.3f s after the signal (grace %g s + %g s)%s;"
                    " exiting now", time.monotonic() - started, self.grace, self.margin,
                    f": {what}" if what else "")
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
