"""What a chaos run observed: one :class:`Recording`, filled by the threads of the run.

Times are seconds since the run started (``time.monotonic`` based), so the report's charts share
one axis. Appends from several threads go through one lock; readers take a snapshot.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

__all__ = ["DbRestart", "Kill", "ProcessRecord", "Recording", "Request", "Sample", "percentile"]


@dataclass(frozen=True, kw_only=True, slots=True)
class Sample:
    """Queue counts of the load's queue at one moment (``done`` counted from the run's start)."""

    t: float
    waiting: int  # ready + scheduled
    reserved: int
    done: int
    buried: int


@dataclass(kw_only=True, slots=True)
class Kill:
    """A signal the killer sent, and what became of the process."""

    t: float
    name: str  # web.1, worker.2 ...
    pid: int
    signal: str  # "TERM" or "KILL"
    exited: float | None = None  # when the process was seen gone
    escalated: bool = False  # it outlived --stop-timeout after SIGTERM and was SIGKILLed
    back: float | None = None  # when a new process of the same name was ready again
    # The client ports of the HTTP connections the process held when it was SIGKILLed (its
    # process group frozen first, so none came or went): the requests that SIGKILL cut.
    cut_ports: list[int] | None = None

    @property
    def stop_seconds(self) -> float | None:
        return None if self.exited is None else self.exited - self.t


@dataclass(frozen=True, kw_only=True, slots=True)
class Request:
    start: float
    end: float
    status: int | None  # None: no response (connection reset, timeout...)
    error: str | None = None
    port: int | None = None  # the client's local port, once connected

    @property
    def failed(self) -> bool:
        return self.status is None or self.status >= 500


@dataclass(frozen=True, kw_only=True, slots=True)
class DbRestart:
    t: float
    seconds: float
    returncode: int
    output: str


@dataclass(kw_only=True, slots=True)
class ProcessRecord:
    """One process of the formation, as ``up`` reported it."""

    name: str
    pid: int
    started: float
    ready_seconds: float | None = None  # up's "ready in X s": spawn to READY=1
    ready_at: float | None = None
    ended: float | None = None
    how: str | None = None  # "exit code 0", "killed by SIGKILL"
    stop_seconds: float | None = None  # SIGTERM to exit, when a SIGTERM was sent

    @property
    def type_name(self) -> str:
        return self.name.rsplit(".", 1)[0]


@dataclass(kw_only=True, slots=True)
class Recording:
    t0: float = field(default_factory=time.monotonic)
    samples: list[Sample] = field(default_factory=list)
    kills: list[Kill] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    db_restarts: list[DbRestart] = field(default_factory=list)
    processes: dict[int, ProcessRecord] = field(default_factory=dict)
    enqueued: int = 0
    load_end: float | None = None  # when the killing stopped and the drain began
    end: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def add_request(self, request: Request) -> None:
        with self.lock:
            self.requests.append(request)

    def add_sample(self, sample: Sample) -> None:
        with self.lock:
            self.samples.append(sample)


def percentile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) by the nearest-rank method; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, int(q * len(ordered) + 0.999999) - 1))
    return ordered[rank]
