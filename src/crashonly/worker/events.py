"""One line per worker event on stdout, as text (for people) or JSON (for log shippers)."""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO

__all__ = ["EventLog"]


class EventLog:
    """Lines are written as events happen and flushed once per loop turn (``flush``), so a
    busy worker does not pay a system call per line."""

    def __init__(self, fmt: str = "text", stream: TextIO | None = None, worker: str = "") -> None:
        self.fmt = fmt
        self.stream = stream or sys.stdout
        self.worker = worker

    def __call__(self, event: str, **fields: Any) -> None:
        now = time.time()
        if self.fmt == "json":
            record = {"ts": round(now, 6), "event": event, "worker": self.worker, **fields}
            line = json.dumps(record, default=str)
        else:
            stamp = time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1000):03d}"
            parts = [f"{k}={_text(v)}" for k, v in fields.items() if v is not None]
            line = f"{stamp} {event:<9} {' '.join(parts)}".rstrip()
        try:
            self.stream.write(line + "\n")
        except (BrokenPipeError, ValueError):
            pass

    def flush(self) -> None:
        try:
            self.stream.flush()
        except (BrokenPipeError, ValueError):
            pass


def _text(value: Any) -> str:
    if type(value) is int:
        return str(value)
    text = str(value)
    if not text or " " in text or '"' in text or "\n" in text or "\t" in text:
        first = text.strip().splitlines()
        text = first[-1] if first else ""
        return json.dumps(text[:200])
    return text
