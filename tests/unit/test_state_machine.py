"""Property test: the SQLite backend against a plain-Python model of the life cycle.

Hypothesis drives random sequences of put / reserve / ack / release / fail / bury / kick /
touch / time passing / recover, including settlements with stale tokens, and after every step
the backend's jobs must match the model's (state, attempts, deaths).
"""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
from dataclasses import dataclass

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import crashonly
from crashonly.backends import WorkerInfo
from crashonly.job import NewJob, Settlement, SettlementKind

LEASE = 10.0
MAX_ATTEMPTS = 3
POISON = 3


@dataclass
class M:
    id: int
    state: str
    run_at: float
    attempts: int = 0
    deaths: int = 0
    alone: bool = False
    token: int | None = None
    lease_expires: float = 0.0


class Clock:
    now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


_DEAD: list[int] = []


def _dead_pid() -> int:
    """The pid of a process that has exited (a registration naming it is of a dead worker)."""
    if not _DEAD:
        proc = subprocess.Popen(["true"])
        proc.wait()
        _DEAD.append(proc.pid)
    return _DEAD[0]


class QueueMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.app = crashonly.App("sqlite:///:memory:", clock=self.clock, poison_after=POISON)
        self.app.backend.store_clock = self.clock  # type: ignore[attr-defined]  # leases too
        self._register()
        self.jobs: dict[int, M] = {}
        self.held: list[tuple[int, int]] = []  # (job id, token) ever handed out
        self.tokens = itertools.count()

    def _register(self, pid: int | None = None) -> None:
        self.app.backend.register_worker(WorkerInfo(
            id="w", host=socket.gethostname(), pid=pid or os.getpid(), started_at=0,
            heartbeat_at=0))

    def teardown(self) -> None:
        self.app.close()

    # --- producers -------------------------------------------------------------------------
    @rule(delay=st.sampled_from([0.0, 0.0, 5.0, 30.0]), n=st.integers(1, 3))
    def put(self, delay: float, n: int) -> None:
        now = self.clock.now
        new = NewJob(task="t", queue="default", payload='{"args":[],"kwargs":{}}',
                     run_at=now + delay, lease=LEASE, max_attempts=MAX_ATTEMPTS)
        for job_id in self.app.backend.put([new] * n, now=now):
            self.jobs[job_id] = M(id=job_id, state="scheduled" if delay else "ready",
                                  run_at=now + delay)

    # --- consumers -------------------------------------------------------------------------
    @rule(limit=st.integers(1, 4))
    def reserve(self, limit: int) -> None:
        now = self.clock.now
        got, _ = self.app.backend.reserve(worker_id="w", queues=["default"], limit=limit, now=now)
        candidates = sorted((m for m in self.jobs.values()
                             if m.state in ("ready", "scheduled") and m.run_at <= now),
                            key=lambda m: (m.run_at, m.id))[:limit]
        if candidates and candidates[0].alone:
            expected = candidates[:1]
        else:
            expected = list(itertools.takewhile(lambda m: not m.alone, candidates))
        assert [r.job.id for r in got] == [m.id for m in expected]
        for r in got:
            m = self.jobs[r.job.id]
            m.state, m.attempts, m.alone, m.token = "reserved", m.attempts + 1, False, r.token
            m.lease_expires = now + LEASE
            self.held.append((m.id, r.token))

    def _settle(self, pick: int, kind: SettlementKind, delay: float = 0.0) -> tuple[M, bool]:
        job_id, token = self.held[pick % len(self.held)]
        refused = self.app.backend.settle(
            [Settlement(job_id=job_id, token=token, kind=kind, result="1", error="e", delay=delay)],
            now=self.clock.now)
        m = self.jobs[job_id]
        valid = m.state == "reserved" and m.token == token
        assert refused == ([] if valid else [job_id])
        return m, valid

    @precondition(lambda self: self.held)
    @rule(pick=st.integers(0, 1000))
    def ack(self, pick: int) -> None:
        m, valid = self._settle(pick, SettlementKind.ACK)
        if valid:
            m.state, m.deaths = "done", 0

    @precondition(lambda self: self.held)
    @rule(pick=st.integers(0, 1000))
    def release(self, pick: int) -> None:
        m, valid = self._settle(pick, SettlementKind.RELEASE)
        if valid:
            m.state, m.attempts, m.deaths = "ready", m.attempts - 1, 0

    @precondition(lambda self: self.held)
    @rule(pick=st.integers(0, 1000), delay=st.sampled_from([0.0, 3.0]))
    def fail(self, pick: int, delay: float) -> None:
        m, valid = self._settle(pick, SettlementKind.FAIL, delay)
        if valid:
            m.deaths = 0
            if m.attempts >= MAX_ATTEMPTS:
                m.state = "buried"
            else:
                m.state = "scheduled" if delay else "ready"
                m.run_at = self.clock.now + delay

    @precondition(lambda self: self.held)
    @rule(pick=st.integers(0, 1000))
    def bury(self, pick: int) -> None:
        m, valid = self._settle(pick, SettlementKind.BURY)
        if valid:
            m.state = "buried"

    @precondition(lambda self: self.held)
    @rule(pick=st.integers(0, 1000))
    def touch(self, pick: int) -> None:
        job_id, token = self.held[pick % len(self.held)]
        refused = self.app.backend.touch([(job_id, token)], now=self.clock.now)
        m = self.jobs[job_id]
        valid = m.state == "reserved" and m.token == token
        assert refused == ([] if valid else [job_id])
        if valid:
            m.lease_expires = self.clock.now + LEASE

    @rule()
    def kick_all(self) -> None:
        kicked = self.app.retry_all_buried()
        buried = [m for m in self.jobs.values() if m.state == "buried"]
        assert kicked == len(buried)
        for m in buried:
            m.state, m.attempts, m.deaths, m.run_at = "ready", 0, 0, self.clock.now

    # --- time and recovery -----------------------------------------------------------------
    @rule(seconds=st.sampled_from([1.0, 4.0, 11.0]))
    def advance_and_recover(self, seconds: float) -> None:
        """The holder is alive (registered): an expired lease is a stall, never a death."""
        self.clock.now += seconds
        now = self.clock.now
        self.app.recover()
        for m in self.jobs.values():
            if m.state == "reserved" and m.lease_expires < now:
                m.state = "ready"  # attempt counted, nobody blamed
        self._promote()

    @rule()
    def holder_dies(self) -> None:
        """The holder dies: blamed only if it held a single job, else all become suspects."""
        self.app.backend.deregister_worker("w")
        self._register(pid=_dead_pid())  # the row now names a process that has exited
        self.app.recover()
        self.app.backend.deregister_worker("w")
        self._register()
        held = [m for m in self.jobs.values() if m.state == "reserved"]
        if len(held) > 1:
            for m in held:
                m.state, m.attempts, m.alone = "ready", m.attempts - 1, True
        elif held:
            [m] = held
            m.deaths += 1
            m.state = "buried" if m.deaths >= POISON or m.attempts >= MAX_ATTEMPTS else "ready"
            m.alone = m.state == "ready"
        self._promote()

    def _promote(self) -> None:
        for m in self.jobs.values():
            if m.state == "scheduled" and m.run_at <= self.clock.now:
                m.state = "ready"

    @invariant()
    def matches_model(self) -> None:
        got = {j.id: (j.state.value, j.attempts, j.deaths)
               for j in self.app.backend.list(limit=10_000)}
        want = {m.id: (m.state, m.attempts, m.deaths) for m in self.jobs.values()}
        assert got == want


QueueMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
TestQueueStateMachine = QueueMachine.TestCase
