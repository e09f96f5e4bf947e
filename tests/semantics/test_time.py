"""Time and death on the store's clock, with real clocks (no fake store clock here).

A caller whose clock is off (``App(clock=...)``: a machine without NTP, a step) must neither
steal a live lease nor keep a dead one; a claim or renewal that waited for the write lock
starts its lease when it got the lock; a live worker whose registration vanished keeps its
jobs and registers again.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import crashonly
from crashonly.backends import WorkerInfo
from crashonly.job import JobState, NewJob, Settlement, SettlementKind
from tests.semantics.conftest import BACKENDS

SKEW = 45.0
W = "healthy-worker"


@pytest.fixture(params=[b for b in ("sqlite", "postgres") if b in BACKENDS])
def apps(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[float], crashonly.App]]:
    """``make(skew)``: an App on one shared store whose clock is ``skew`` seconds off."""
    url = BACKENDS[request.param](tmp_path, request)
    made: list[crashonly.App] = []

    def make(skew: float = 0.0) -> crashonly.App:
        app = crashonly.App(url, clock=lambda: time.time() + skew)
        app.migrate()
        made.append(app)
        return app

    yield make
    for app in made:
        app.close()


def _job(app: crashonly.App, *, lease: float = 30.0, delay: float = 0.0) -> NewJob:
    now = app.clock()
    return NewJob(task="t", queue="default", payload='{"args":[],"kwargs":{}}', run_at=now + delay,
                  lease=lease)


def _register(app: crashonly.App, worker_id: str = W) -> None:
    now = app.clock()
    app.backend.register_worker(WorkerInfo(id=worker_id, host=socket.gethostname(),
                                           pid=os.getpid(), started_at=now, heartbeat_at=now))


@pytest.mark.parametrize("skew", [SKEW, -SKEW])
def test_a_skewed_clock_steals_no_live_lease(apps: Callable[[float], crashonly.App],
                                             skew: float) -> None:
    healthy, skewed = apps(0.0), apps(skew)
    _register(healthy)
    ids = healthy.backend.put([_job(healthy), _job(healthy)], now=healthy.clock())
    held, _ = healthy.backend.reserve(worker_id=W, queues=["default"], limit=2,
                                      now=healthy.clock())
    assert sorted(r.job.id for r in held) == ids
    report = skewed.recover()
    assert not report.requeued and not report.dead_workers
    assert {healthy.get_job(i).state for i in ids} == {JobState.RESERVED}
    # A renewal by the skewed side moves the lease on the store's clock too.
    assert skewed.backend.touch([(r.job.id, r.token) for r in held], now=skewed.clock()) == []
    for i in ids:
        expires = healthy.get_job(i).lease_expires_at
        assert expires is not None and abs(expires - (time.time() + 30)) < 5
    # Schedules: a job due in 20 s is not claimed early by a clock 45 s fast, and a delay set by
    # a clock 45 s slow is still 20 s from now, not already due.
    [later] = skewed.backend.put([_job(skewed, delay=20)], now=skewed.clock())
    got, _ = skewed.backend.reserve(worker_id="other", queues=["default"], limit=5,
                                    now=skewed.clock())
    assert got == [] and healthy.get_job(later).state is JobState.SCHEDULED
    assert abs(healthy.get_job(later).run_at - (time.time() + 20)) < 5


@pytest.mark.parametrize("skew", [SKEW, -SKEW])
def test_a_skewed_clock_keeps_no_dead_lease(apps: Callable[[float], crashonly.App],
                                            skew: float) -> None:
    healthy, skewed = apps(0.0), apps(skew)
    # The holder is unknown to the store (no registration to judge): only its lease can end.
    [job_id] = healthy.backend.put([_job(healthy, lease=1.0)], now=healthy.clock())
    [r], _ = healthy.backend.reserve(worker_id="ghost", queues=["default"], limit=1,
                                     now=healthy.clock())
    time.sleep(1.3)
    assert job_id in skewed.recover().requeued
    # A retry delay set by the skewed side is counted from the store's now.
    [r], _ = skewed.backend.reserve(worker_id="ghost", queues=["default"], limit=1,
                                    now=skewed.clock())
    fail = Settlement(job_id=job_id, token=r.token, kind=SettlementKind.FAIL, error="x", delay=5)
    assert skewed.backend.settle([fail], now=skewed.clock()) == []
    job = healthy.get_job(job_id)
    assert job.state is JobState.SCHEDULED and abs(job.run_at - (time.time() + 5)) < 2


def test_a_claim_that_waited_for_the_write_lock_is_not_born_expired(tmp_path: Path) -> None:
    """SQLite: another transaction holds the write lock longer than the lease. The claim and
    the renewal that waited for it start their leases when they got the lock."""
    url = f"sqlite:///{tmp_path / 'q.db'}"
    app, writer = crashonly.App(url), crashonly.App(url)
    try:
        _register(app)
        [job_id] = app.backend.put([_job(app, lease=1.5)], now=app.clock())
        locked = threading.Event()

        def hold_the_write_lock(seconds: float) -> None:
            with writer.backend.transaction():
                locked.set()
                time.sleep(seconds)

        held = None
        for step in ("claim", "renew"):
            locked.clear()
            holder = threading.Thread(target=hold_the_write_lock, args=(2.5,))
            holder.start()
            assert locked.wait(5)
            asked = app.clock()
            if held is None:
                [held], _ = app.backend.reserve(worker_id=W, queues=["default"], limit=1, now=asked)
                assert held.job.id == job_id
            else:
                assert app.backend.touch([(held.job.id, held.token)], now=asked) == []
            holder.join()
            assert time.time() - asked >= 2.4  # it did wait for the lock
            report = app.recover()
            assert not report.requeued, f"{step}: born expired"
            job = app.get_job(job_id)
            assert job.state is JobState.RESERVED and job.attempts == 1
            assert job.lease_expires_at is not None and job.lease_expires_at > asked + 2.5
    finally:
        writer.close()
        app.close()


def test_a_live_worker_whose_registration_vanished_keeps_its_jobs(
    apps: Callable[[float], crashonly.App],
) -> None:
    mine, other = apps(0.0), apps(0.0)
    _register(mine)
    [job_id] = mine.backend.put([_job(mine)], now=mine.clock())
    [r], _ = mine.backend.reserve(worker_id=W, queues=["default"], limit=1, now=mine.clock())
    _delete_registration(other, W)
    assert [w.id for w in other.backend.workers()] == []
    # Not provably dead (no registration to judge): its jobs wait for their leases.
    assert not other.recover().requeued
    mine.backend.heartbeat(W, now=mine.clock())  # notices, registers again
    assert [w.id for w in other.backend.workers()] == [W]
    assert not other.recover().requeued
    ack = Settlement(job_id=job_id, token=r.token, kind=SettlementKind.ACK, result="1")
    assert mine.backend.settle([ack], now=mine.clock()) == []
    assert mine.get_job(job_id).state is JobState.DONE


def _delete_registration(app: crashonly.App, worker_id: str) -> None:
    """What an operator, or a process that wrongly judged the worker dead, does."""
    with app.backend.transaction() as conn:
        if app.url.startswith("sqlite"):
            conn.execute("DELETE FROM crashonly_workers WHERE id = ?", (worker_id,))
        else:
            schema = app.backend.schema  # type: ignore[attr-defined]
            conn.execute(f'DELETE FROM "{schema}".workers WHERE id = %s', (worker_id,))


def test_upgrade_keeps_the_leases_of_jobs_claimed_before(tmp_path: Path) -> None:
    """SQLite schema 2 -> 3: a job reserved by a worker of the old version has no monotonic
    deadline; it is judged by its wall-clock lease (neither stolen nor kept)."""
    import sqlite3

    from crashonly.backends.sqlite import Q
    from crashonly.liveness import this_process

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    for version in (1, 2):
        conn.executescript(Q[f"migration_{version}"])
    me = this_process()
    conn.executescript(f"""
        INSERT INTO crashonly_meta VALUES ('schema_version', '2');
        INSERT INTO crashonly_workers VALUES ('old', '{me.host}', '{me.boot_id}', {me.pid},
            '{me.start}', 0, 0, '[]', 1);
        INSERT INTO crashonly_jobs (task, queue, state, priority, payload, max_attempts,
            lease_seconds, run_at, created_at, lease_expires_at, worker, token, attempts)
        VALUES ('t', 'default', 'reserved', 100, '{{}}', 5, 1.0, 0, 0, {time.time() + 1.0},
            'old', 7, 1);
    """)
    conn.close()
    app = crashonly.App(f"sqlite:///{path}")
    try:
        assert app.migrate() == 3
        assert not app.recover().requeued  # its old-style lease still runs
        time.sleep(1.1)
        assert app.recover().requeued == [1]
    finally:
        app.close()


def test_postgres_upgrade_from_schema_1(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if "postgres" not in BACKENDS:
        pytest.skip("no PostgreSQL factory")
    import psycopg

    from crashonly.backends.postgres import _RAW, PostgresBackend, parse_url

    url = BACKENDS["postgres"](tmp_path, request)
    conninfo, schema, _ = parse_url(url)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(_RAW["migration_1"].replace("{schema}", f'"{schema}"').encode())
        conn.execute(f"""INSERT INTO "{schema}".meta VALUES ('schema_version', '1')""".encode())
    backend = PostgresBackend(url)
    try:
        assert backend.migrate() == 2
        now = time.time()
        backend.register_worker(WorkerInfo(id=W, host=socket.gethostname(), pid=os.getpid(),
                                           started_at=now, heartbeat_at=now))
        [job_id] = backend.put([NewJob(task="t", queue="default", payload="{}", run_at=now)],
                               now=now)
        [r], _ = backend.reserve(worker_id=W, queues=["default"], limit=1, now=now)
        assert not backend.recover(now=now).requeued and r.job.id == job_id
    finally:
        backend.close()
