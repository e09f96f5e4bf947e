"""``up``'s output: one line per child line, ``HH:MM:SS web.1  | text``, coloured on a terminal.

Colour follows the ``NO_COLOR`` / ``FORCE_COLOR`` conventions, else whether stdout is a
terminal. ``up``'s own messages use the name ``up``. Writes are blocking: if whoever reads our
stdout is slow, children block on their pipes rather than ``up`` buffering without bound.
"""

from __future__ import annotations

import os
import sys
import time
from typing import BinaryIO

__all__ = ["Logs"]

_COLOURS = ("36", "33", "32", "35", "34", "96", "93", "92", "95", "94")
_BOLD_RED = "1;31"


class Logs:
    def __init__(self, names: list[str], *, stream: BinaryIO | None = None,
                 colour: bool | None = None) -> None:
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
        try:
            self.stream.write(data)
            self.stream.flush()
        except BrokenPipeError:
            # Whoever read our output went away (`crashonly up | head`): keep supervising.
            pass
