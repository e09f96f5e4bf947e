"""``up``'s output: one line per child line, ``HH:MM:SS web.1  | text``, coloured on a terminal.

Colour follows the ``NO_COLOR`` / ``FORCE_COLOR`` conventions, else whether stdout is a
terminal. ``up``'s own messages use the name ``up``.

Supervision never waits for whoever reads our output. Lines go into a bounded buffer (1 MiB by
default) that a writer thread empties into stdout; when the reader is slower than the children
(a full pipe, a terminal paused with Ctrl-S), lines that do not fit are dropped and counted, and
``N line(s) dropped`` is written in their place once there is room again. (A blocking write in
the loop would stop ``up`` from reaping children, restarting them and even obeying SIGTERM.)
The thread writes with ``os.write`` on the descriptor, not through ``sys.stdout``, so no Python
buffer lock is held while it is blocked. At exit, what is left is written for at most
``close_timeout`` seconds.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import BinaryIO

__all__ = ["Logs"]

_COLOURS = ("36", "33", "32", "35", "34", "96", "93", "92", "95", "94")
_BOLD_RED = "1;31"


class Logs:
    def __init__(self, names: list[str], *, stream: BinaryIO | None = None,
                 colour: bool | None = None, limit: int = 1 << 20) -> None:
        self.stream = stream if stream is not None else sys.stdout.buffer
        if colour is None:
            if os.environ.get("NO_COLOR"):
                colour = False
            elif os.environ.get("FORCE_COLOR"):
                colour = True
            else:
                colour = self.stream.isatty()
        self.colour = colour
        self.width = max([len("up"), *(len(n) + 3 for n in names)])
        self._colour_of = {name: _COLOURS[i % len(_COLOURS)] for i, name in enumerate(names)}
        self.limit = limit
        self._pending: list[bytes] = []
        self._size = 0
        self._dropped = 0
        self._closed = False
        self._broken = False
        self._ready = threading.Condition()
        self._writer = threading.Thread(target=self._drain, name="up-logs", daemon=True)
        self._writer.start()

    def _prefix(self, label: str, type_name: str | None, error: bool) -> str:
        stamp = time.strftime("%H:%M:%S")
        text = f"{stamp} {label.ljust(self.width)} | "
        if not self.colour:
            return text
        code = _BOLD_RED if error else self._colour_of.get(type_name or "", "1")
        return f"\x1b[{code}m{text}\x1b[0m"

    def child(self, label: str, type_name: str, line: bytes) -> None:
        self._write(self._prefix(label, type_name, False).encode() + line.rstrip(b"\r\n") + b"\n")

    def info(self, message: str) -> None:
        self._write((self._prefix("up", None, False) + message + "\n").encode())

    def error(self, message: str) -> None:
        self._write((self._prefix("up", None, True) + message + "\n").encode())

    def _write(self, data: bytes) -> None:
        """Queue one line; never blocks (beyond a lock held for a list append)."""
        with self._ready:
            if self._broken:
                return
            if self._size + len(data) > self.limit:
                self._dropped += 1
                return
            if self._dropped:
                notice = (f"{self._dropped} line(s) dropped: the output was not read fast "
                          "enough\n")
                self._pending.append(self._prefix("up", None, True).encode() + notice.encode())
                self._dropped = 0
            self._pending.append(data)
            self._size += len(data)
            self._ready.notify()

    def _drain(self) -> None:
        while True:
            with self._ready:
                while not self._pending and not self._closed:
                    self._ready.wait()
                if not self._pending:
                    return
                data = b"".join(self._pending)
                self._pending.clear()
                self._size = 0
            try:
                self._emit(data)
            except OSError:
                # Whoever read our output went away (`crashonly up | head`): keep supervising,
                # and stop writing.
                with self._ready:
                    self._broken = True
                    self._pending.clear()
                return

    def _emit(self, data: bytes) -> None:
        try:
            fd = self.stream.fileno()
        except (AttributeError, OSError, ValueError):  # not a file (tests pass a BytesIO)
            self.stream.write(data)
            self.stream.flush()
            return
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]

    def close(self, timeout: float = 2.0) -> None:
        """Write what is queued, waiting at most ``timeout`` seconds for a slow reader."""
        with self._ready:
            self._closed = True
            self._ready.notify()
        self._writer.join(timeout)
