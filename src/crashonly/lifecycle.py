"""How a crashonly process starts and stops, written once for worker, web and supervisor.

* Signal handlers only record the signal and set an event (Python runs handlers in the main
  thread between bytecodes; a handler that does I/O or takes locks can deadlock). The process's
  own loop reads the event and acts. Installing handlers returns the previous ones, restored by
  :meth:`Shutdown.restore`.
* The first SIGTERM/SIGINT asks for a graceful stop; a second one asks to stop *now*.
* Readiness is announced with the systemd notify protocol (``READY=1``, ``STOPPING=1`` on the
  datagram socket named by ``$NOTIFY_SOCKET``), which ``crashonly up`` and systemd
  ``Type=notify`` both understand. Without ``$NOTIFY_SOCKET`` it does nothing.
* :func:`die_with_parent` makes a child exit when its supervisor dies (``PR_SET_PDEATHSIG``),
  but only when the supervisor asked for it (``CRASHONLY_DIE_WITH_PARENT=1`` in the child's
  environment, or ``--die-with-parent``): by default a process outlives the shell that started
  it (``nohup crashonly worker … &``). Under ``crashonly up`` (``$CRASHONLY_UP_PID`` set) it
  does nothing: ``up``'s watchdog already sends exactly one SIGTERM to every child's process
  group, and a second one from the kernel would turn a graceful stop into an immediate one.
* :func:`become_subreaper` is the supervisor's side: orphans of its children are reparented to
  it (``PR_SET_CHILD_SUBREAPER``), so it reaps them and their process groups empty out.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

__all__ = ["Shutdown", "become_subreaper", "die_with_parent", "notify"]

Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None

DIE_WITH_PARENT_ENV = "CRASHONLY_DIE_WITH_PARENT"
# Our parent when crashonly was first imported: if it is gone by the time die_with_parent()
# runs (after start-up), the parent died before the kernel could be told to signal us.
_FIRST_PARENT = os.getppid()


class Shutdown:
    """Turns SIGTERM/SIGINT into events: ``requested`` on the first, ``immediate`` on the second."""

    def __init__(self, signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)):
        self.signals = signals
        self.requested = threading.Event()
        self.immediate = threading.Event()
        self.received: list[int] = []
        self._previous: dict[signal.Signals, Handler] = {}
        self._wakeups: list[Callable[[], None]] = []

    @property
    def installed(self) -> bool:
        return bool(self._previous)

    def install(self) -> Shutdown:
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def on_signal(self, wake: Callable[[], None]) -> None:
        """Also call ``wake`` (which must be signal-safe: set an event, put to a queue)."""
        self._wakeups.append(wake)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signum)
        if self.requested.is_set():
            self.immediate.set()
        self.requested.set()
        for wake in self._wakeups:
            wake()

    def request(self, immediate: bool = False) -> None:
        """Ask for a stop from inside the process (tests, fatal errors)."""
        self._handle(signal.SIGTERM, None)
        if immediate:
            self.immediate.set()


def notify(state: str) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``) to ``$NOTIFY_SOCKET``; False if there is none."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    try:
        import socket  # only processes run under a supervisor pay for it

        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError:
        return False
    return True


def die_with_parent(sig: int = signal.SIGTERM) -> bool:
    """If our supervisor asked for it (``CRASHONLY_DIE_WITH_PARENT=1``), ask Linux to send
    ``sig`` to this process when its parent dies; returns whether it was asked. The variable
    is removed from our environment: it is meant for this process, not for what it starts."""
    wanted = os.environ.pop(DIE_WITH_PARENT_ENV, "") == "1"
    if not wanted or os.environ.get("CRASHONLY_UP_PID"):
        return False
    pr_set_pdeathsig = 1
    if not _prctl(pr_set_pdeathsig, sig):
        return True
    # The parent died before prctl took effect: we were re-parented. (Compare with the parent
    # we had, not with 1: under systemd or tini the parent *is* pid 1 and alive.)
    if os.getppid() != _FIRST_PARENT:
        os.kill(os.getpid(), sig)
    return True


def become_subreaper() -> bool:
    """Adopt our descendants' orphans (Linux ``PR_SET_CHILD_SUBREAPER``); False elsewhere."""
    pr_set_child_subreaper = 36
    return _prctl(pr_set_child_subreaper, 1)


def _prctl(option: int, value: int) -> bool:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(option, value, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False
