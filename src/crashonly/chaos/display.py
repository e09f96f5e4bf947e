"""What the run prints: a live status line on a terminal (plain lines every few seconds
otherwise, so CI logs stay readable), and the summary at the end."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import TextIO

from .record import Recording
from .verify import Verdict

__all__ = ["Progress", "summary"]


class Progress:
    def __init__(self, recording: Recording, *, total_jobs: int, duration: float,
                 stream: TextIO | None = None) -> None:
        self.recording = recording
        self.total_jobs = total_jobs
        self.duration = duration
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.phase = "load"
        self.stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-display", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self._thread.join()
        if self.tty:
            self.stream.write("\r\x1b[K")
            self.stream.flush()

    def line(self) -> str:
        r = self.recording
        with r.lock:
            sample = r.samples[-1] if r.samples else None
            kills = list(r.kills)
            requests = list(r.requests)
        done = sample.done if sample else 0
        term = sum(1 for k in kills if k.signal != "KILL")
        failed = sum(1 for q in requests if q.failed)
        http = f"  http {len(requests) - failed} ok {failed} failed" if requests else ""
        waiting = f"{sample.waiting} waiting {sample.reserved} running" if sample else "-"
        where = (f"{r.now():5.1f}/{self.duration:g} s" if self.phase == "load"
                 else f"{r.now():5.1f} s draining")
        return (f"{where}  jobs {done}/{self.total_jobs} done, {waiting}  "
                f"kills {len(kills)} (TERM {term}, KILL {len(kills) - term}){http}")

    def _run(self) -> None:
        every = 0.25 if self.tty else 5.0
        while not self.stopping.wait(every):
            self.write(self.line())

    def write(self, text: str) -> None:
        try:
            if self.tty:
                self.stream.write("\r\x1b[K" + text[:200])
            else:
                self.stream.write(text + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass


def summary(verdict: Verdict, totals: list[tuple[str, str]],
            timing_rows: list[tuple[str, ...]], table: Callable[..., str]) -> str:
    lines = ["", table(timing_rows, ["process", "start-up p50/p99", "shutdown p50/p99",
                                     "back in service p50/p99"]), ""]
    lines.append(table(totals, ["", ""]).split("\n", 2)[2])
    lines.append("")
    rows = [("ok" if c.ok else "FAILED", c.name, c.summary) for c in verdict.checks]
    lines.append(table(rows, ["", "invariant", "result"]))
    for c in verdict.checks:
        if not c.ok and c.details:
            lines.append(f"\n{c.name}:")
            lines += [f"  - {d}" for d in c.details]
    lines.append("")
    lines.append("PASS: every invariant held." if verdict.ok
                 else "FAIL: invariants violated (see above).")
    return "\n".join(lines)
