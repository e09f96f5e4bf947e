"""The backend protocol: the domain verbs every queue backend implements.

A backend stores opaque payloads and enforces the life cycle (docs/design.md): it owns claims,
leases, fencing tokens, retries' scheduling, poison detection and recovery. The layers above it
(:mod:`crashonly.app`, :mod:`crashonly.worker`) never see SQL or a driver.

Time: every verb takes ``now``, the caller's clock (seconds since the epoch), but a backend
decides leases, schedules and recovery on the *store's* clock — PostgreSQL's own, SQLite's
machine clocks read under the write lock — so a caller whose clock is off cannot steal a live
lease or keep a dead one (docs/design.md, "Time and death"). The caller's ``now`` only turns
the caller's times (``run_at``) into delays. Tests set ``store_clock`` to a fake clock and
advance it instead of sleeping.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..job import Job, JobState, NewJob, Reservation, Settlement

__all__ = ["Backend", "Capabilities", "RecoveryReport", "WorkerInfo"]

@dataclass(frozen=True, kw_only=True, slots=True)
class Capabilities:
    """What a backend can do, declared by the backend; every field defaults to False (claim
    only what is true). :class:`~crashonly.App` refuses what the backend lacks with a
    :class:`~crashonly.errors.ConfigError` when a task is declared or a job enqueued, never
    when it runs, and the contract suite (tests/semantics) skips exactly the tests of what a
    backend lacks (docs/backends.md, "Capabilities")."""

    # A job's effects commit with its ack (``@app.task(transactional=True)``, ``run_transactional``)
    # and ``put`` joins the caller's transaction (``options(connection=...)``). Needs fencing.
    transactional: bool = False
    delays: bool = False  # ``delay=`` / ``run_at=`` at enqueue (retries' backoff aside)
    priorities: bool = False  # ``priority=`` at enqueue, a task's priority other than 100
    unique_keys: bool = False  # ``unique_key=`` at enqueue
    results: bool = False  # ``get`` by id keeps state, result, error: ``get_job``, ``wait()``
    inspection: bool = False  # ``list``, ``stats``, ``kick``, ``delete``: jobs list, retry, stats
    fencing: bool = False  # a settle/touch with a stale token is refused (reported), not applied
    multi_process: bool = False  # many processes may share it (False for sqlite:///:memory:)
    remote: bool = False  # a server over the network: an outage is waited out, not fatal

    def __post_init__(self) -> None:
        if self.transactional and not self.fencing:
            # An ack that commits the job's effects must be refused once the lease is lost,
            # or a job another worker re-ran would commit its effects twice.
            raise ValueError("a backend declaring transactional must declare fencing too")


@dataclass(frozen=True, kw_only=True, slots=True)
class WorkerInfo:
    id: str
    host: str
    pid: int
    started_at: float
    heartbeat_at: float
    queues: list[str] = field(default_factory=list)
    concurrency: int = 1


@dataclass(frozen=True, kw_only=True, slots=True)
class RecoveryReport:
    """What one ``recover`` pass changed."""

    dead_workers: list[str] = field(default_factory=list)
    requeued: list[int] = field(default_factory=list)  # back to ready
    buried: list[int] = field(default_factory=list)  # poison or attempts exhausted
    promoted: int = 0  # scheduled -> ready
    purged: int = 0  # done jobs past retention

    def __bool__(self) -> bool:
        return bool(self.dead_workers or self.requeued or self.buried or self.promoted)


class Backend(Protocol):
    """Domain verbs of a queue backend. Implementations: sqlite, postgres; writing another:
    docs/backends.md."""

    url: str
    capabilities: Capabilities
    store_clock: Callable[[], float] | None  # None: the store's own clock (tests fake it)

    # --- schema -------------------------------------------------------------------------------
    def migrate(self) -> int:
        """Create or upgrade the schema; return the schema version. Idempotent."""
        ...

    def close(self) -> None: ...

    # --- producers ----------------------------------------------------------------------------
    def put(self, jobs: Sequence[NewJob], *, now: float, connection: Any = None) -> list[int]:
        """Store jobs in one transaction (the caller's own, if ``connection`` is given and the
        backend is transactional) and return their ids, in order. A job whose ``unique_key`` is
        held by another job of the same task is not stored: the holder's id stands in, as an
        :class:`~crashonly.job.Existing` (an int carrying the holder's state). A done holder
        past its ``unique_after_done`` window, or a buried one without
        ``unique_while_buried``, lets go of the key first (docs/queue.md, "Unique keys")."""
        ...

    # --- consumers ----------------------------------------------------------------------------
    def reserve(
        self,
        *,
        worker_id: str,
        queues: Sequence[str],
        limit: int,
        now: float,
        settle: Sequence[Settlement] = (),
    ) -> tuple[list[Reservation], list[int]]:
        """Apply ``settle`` then claim up to ``limit`` ready jobs, in one transaction.

        Returns the reservations and the ids of settlements refused for a stale token.
        A job whose previous holder died while it shared a reservation with others is claimed
        alone, so a later death can be blamed on it exactly (poison detection)."""
        ...

    def settle(self, settlements: Sequence[Settlement], *, now: float) -> list[int]:
        """Apply acks, releases, failures and burials; return the ids refused for a stale token."""
        ...

    def touch(self, leases: Sequence[tuple[int, int]], *, now: float) -> list[int]:
        """Extend the leases of ``(job_id, token)`` pairs; return the ids whose token is stale."""
        ...

    def touch_worker(self, worker_id: str, *, now: float) -> int:
        """Extend the leases of every job reserved by ``worker_id``, whatever its token; return
        how many. Only for the heartbeat helper (:mod:`crashonly.worker.heartbeat`), which
        renews while the worker itself cannot."""
        ...

    def run_transactional(
        self, reservation: Reservation, fn: Callable[[Any], str | None], *, clock: Callable[[], float]
    ) -> str | None:
        """Run ``fn(connection)`` in one transaction with the ack of ``reservation``: ``fn``
        returns the encoded result, the ack is fenced by the token, and both commit or neither
        does. Raises :class:`StaleLease` (everything rolled back) if the token is stale, and
        re-raises what ``fn`` raises after rolling back."""
        ...

    def transaction(self) -> AbstractContextManager[Any]:
        """A write transaction on this backend's database, yielding a DB-API connection."""
        ...

    def abort(self, connection: Any) -> None:
        """Roll back (from another thread) the transaction a transactional job holds open on
        ``connection``; used only when a job outlives the worker's shutdown grace."""
        ...

    # --- recovery and workers -----------------------------------------------------------------
    def recover(
        self, *, now: float, poison_after: int = 3, retention: float = 86400.0
    ) -> RecoveryReport:
        """Return the jobs of dead workers and of expired leases; bury poison; promote due
        scheduled jobs; purge done jobs past retention."""
        ...

    def register_worker(self, info: WorkerInfo) -> None: ...

    def heartbeat(self, worker_id: str, *, now: float) -> None:
        """Record that the worker lives; a worker of this process whose registration vanished
        (judged dead by mistake, deleted by hand) is registered again."""
        ...

    def clock_skew(self, now: float) -> float:
        """How far the caller's clock (``now``, read just before the call) is ahead of the
        store's (negative: behind), in seconds."""
        ...

    def deregister_worker(self, worker_id: str) -> None: ...

    def workers(self) -> list[WorkerInfo]: ...

    # --- inspection and admin -----------------------------------------------------------------
    def get(self, job_id: int, *, payload: bool = True) -> Job | None:
        """The job, or None. ``payload=False``: its ``payload`` is ``""`` (not read)."""
        ...

    def list(
        self, *, state: JobState | None = None, queue: str | None = None, limit: int = 100
    ) -> list[Job]: ...

    def stats(self) -> dict[str, dict[str, int]]:
        """``{queue: {state: count}}`` for every state, zeros included."""
        ...

    def kick(self, job_ids: Sequence[int] | None, *, now: float) -> int:
        """Buried -> ready (all buried jobs when ``job_ids`` is None); return how many."""
        ...

    def delete(self, job_id: int) -> bool: ...

    def bury(self, job_id: int, reason: str, *, now: float) -> bool:
        """Bury a job that is not reserved (admin action); return whether it was buried."""
        ...

    def wait_for_change(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds until something may have changed (new job, ...).
        Returns True if woken early. Backends without notifications poll cheaply."""
        ...
