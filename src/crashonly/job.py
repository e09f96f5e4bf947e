"""Values of the queue: jobs as stored, jobs to be put, reservations held by a worker.

All are frozen, keyword-only dataclasses built from backend rows; change them with
:func:`dataclasses.replace`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

__all__ = ["Job", "JobState", "NewJob", "Reservation", "Settlement", "SettlementKind"]


class JobState(enum.StrEnum):
    """Where a job is in its life cycle (see docs/design.md)."""

    SCHEDULED = "scheduled"  # waiting for run_at
    READY = "ready"  # may be reserved now
    RESERVED = "reserved"  # held by a worker under a lease and a fencing token
    DONE = "done"  # acked; kept for the retention period
    BURIED = "buried"  # failed for good (or poison); kept until kicked or deleted


@dataclass(frozen=True, kw_only=True, slots=True)
class Job:
    """A job as the backend holds it."""

    id: int
    task: str
    queue: str
    state: JobState
    priority: int
    attempts: int
    max_attempts: int
    run_at: float
    created_at: float
    lease_expires_at: float | None
    worker: str | None
    last_error: str | None
    result: Any
    args: list[Any]
    kwargs: dict[str, Any]
    unique_key: str | None = None
    deaths: int = 0
    finished_at: float | None = None

    @property
    def idempotency_key(self) -> str:
        """Stable across attempts; hand it to outside services to make effects idempotent."""
        return f"crashonly-job-{self.id}"


@dataclass(frozen=True, kw_only=True, slots=True)
class NewJob:
    """A job to be put. ``payload`` is the encoded ``{"args": [...], "kwargs": {...}}``."""

    task: str
    queue: str
    payload: str
    priority: int = 100
    run_at: float
    max_attempts: int = 5
    lease: float = 30.0
    unique_key: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Reservation:
    """A job held by a worker: only the holder of ``token`` may settle or extend it."""

    job: Job
    token: int
    lease: float
    payload: str


class SettlementKind(enum.Enum):
    ACK = "ack"  # done, with a result
    RELEASE = "release"  # back to ready, no attempt counted (graceful shutdown)
    FAIL = "fail"  # failed: scheduled again after ``delay``, or buried once attempts are exhausted
    BURY = "bury"  # failed for good, whatever the attempts left


@dataclass(frozen=True, kw_only=True, slots=True)
class Settlement:
    """How a worker ends its hold on a reservation; applied in batches by the backend."""

    job_id: int
    token: int
    kind: SettlementKind
    result: str | None = None  # encoded JSON, for ACK
    error: str | None = None  # for FAIL and BURY
    delay: float = 0.0  # for FAIL
