"""Death detection by session advisory lock: a worker is alive while its connection is."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import psycopg
import pytest

import crashonly
from crashonly.backends import RecoveryReport, WorkerInfo
from crashonly.backends.postgres import PostgresBackend
from crashonly.job import JobState, NewJob
from tests.postgres.conftest import conninfo
from tests.processes.harness import Proc

pytestmark = pytest.mark.postgres
NOW = 1_800_000_000.0


def _job(lease: float = 600.0) -> NewJob:
    return NewJob(task="t", queue="default", payload='{"args":[],"kwargs":{}}', run_at=NOW,
                  lease=lease)


def _elsewhere(worker_id: str) -> WorkerInfo:
    """A worker on another machine: no pid this machine could check, only its lock."""
    return WorkerInfo(id=worker_id, host="another-machine", pid=4242, started_at=NOW,
                      heartbeat_at=NOW)


def _dead_after_grace(watcher: PostgresBackend) -> RecoveryReport:
    """A free lock of a worker on another machine is a death once it stays free for the grace
    (shortened here): the first pass only notes it."""
    watcher.LOCK_GRACE = 0.3
    assert not watcher.recover(now=NOW).dead_workers
    deadline = time.monotonic() + 5  # the server may take a moment to end the session
    while True:
        time.sleep(0.05)
        report = watcher.recover(now=NOW)
        if report.dead_workers or time.monotonic() > deadline:
            return report


def test_a_worker_is_alive_while_its_session_is(pg_url: str) -> None:
    watcher, holder = PostgresBackend(pg_url), PostgresBackend(pg_url)
    try:
        [job_id] = watcher.put([_job()], now=NOW)
        holder.register_worker(_elsewhere("far"))
        [_held], _ = holder.reserve(worker_id="far", queues=["default"], limit=1, now=NOW)
        assert not watcher.recover(now=NOW)
        assert watcher.get(job_id).state is JobState.RESERVED  # type: ignore[union-attr]
        holder.close()  # the process "dies": its connections close, its lock goes with them
        report = _dead_after_grace(watcher)  # no lease expired
        assert report.dead_workers == ["far"] and report.requeued == [job_id]
        job = watcher.get(job_id)
        assert job is not None and job.state is JobState.READY and job.deaths == 1
        assert [w.id for w in watcher.workers()] == []
    finally:
        holder.close()
        watcher.close()


def test_a_session_ended_for_good_is_a_death(pg_url: str) -> None:
    """A network partition ends in the server closing the session (keepalives) or an admin
    terminating it: the lock goes and, once the worker has had the grace to take it again and
    did not, the jobs come back without waiting for the lease."""
    watcher, holder = PostgresBackend(pg_url), PostgresBackend(pg_url)
    try:
        [job_id] = watcher.put([_job()], now=NOW)
        holder.register_worker(_elsewhere("cut-off"))
        holder.reserve(worker_id="cut-off", queues=["default"], limit=1, now=NOW)
        with psycopg.connect(conninfo(pg_url), autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
                "WHERE application_name = 'crashonly worker cut-off'"
            )
        report = _dead_after_grace(watcher)
        assert report.dead_workers == ["cut-off"] and report.requeued == [job_id]
    finally:
        holder.close()
        watcher.close()


def test_a_live_worker_reconnects_and_keeps_its_jobs(pg_url: str) -> None:
    """If only the lock's connection drops while the process lives, the process re-takes the
    lock on its next pass and its jobs stay its own (unless someone recovered them first)."""
    backend = PostgresBackend(pg_url)
    try:
        [job_id] = backend.put([_job()], now=NOW)
        backend.register_worker(_elsewhere("me"))
        [r], _ = backend.reserve(worker_id="me", queues=["default"], limit=1, now=NOW)
        with psycopg.connect(conninfo(pg_url), autocommit=True) as admin:
            ended = admin.execute(
                "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
                "WHERE application_name = 'crashonly worker me'"
            ).fetchall()
        assert ended == [(True,)]
        report = backend.recover(now=NOW)  # re-locks first, so it finds itself alive
        assert not report.dead_workers and not report.requeued
        assert backend.settle([], now=NOW) == []
        from crashonly.job import Settlement, SettlementKind

        ack = Settlement(job_id=job_id, token=r.token, kind=SettlementKind.ACK, result="1")
        assert backend.settle([ack], now=NOW) == []
        assert backend.get(job_id).state is JobState.DONE  # type: ignore[union-attr]
    finally:
        backend.close()


def test_killed_worker_process_job_runs_elsewhere_within_a_second(
    pg_url: str, pg_env: dict[str, str], tmp_path: Path
) -> None:
    app = crashonly.App(pg_url)
    app.migrate()
    marker = tmp_path / "starts"
    env = dict(pg_env, DATABASE_URL=pg_url)
    first = Proc(["worker", "pgapp:app"], env)
    second: Proc | None = None
    try:
        first.wait_for(r"\bready\b")
        app.enqueue("pgapp.sleeper", [30, str(marker)])
        first.wait_for(r"started .*pgapp.sleeper")
        second = Proc(["worker", "pgapp:app"], env)
        second.wait_for(r"\bready\b")
        killed = time.time()
        first.signal(signal.SIGKILL)
        second.wait_for(r"started .*pgapp.sleeper", timeout=5)
        deadline = time.monotonic() + 5
        while len(starts := marker.read_text().splitlines()) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        restarted = float(starts[1].split()[1])
        # The design target is 1 s; the bound here is loose for a loaded machine
        # (bench/postgres_peers.py measures it).
        assert restarted - killed < 3.0, f"re-ran {restarted - killed:.2f} s after SIGKILL"
        job = app.list_jobs(state="reserved")[0]
        assert job.deaths == 1 and job.attempts == 2
    finally:
        first.stop()
        if second is not None:
            second.stop()
        app.close()


def test_ending_a_live_workers_lock_session_is_no_death(
    pg_url: str, pg_env: dict[str, str], tmp_path: Path
) -> None:
    """A pooler, a DBA or a failover ends the session holding a live worker's advisory lock,
    again and again while its plain job runs. Another worker must not declare it dead: the
    owner re-takes its lock within the grace, and the job runs once."""
    app = crashonly.App(pg_url)
    app.migrate()
    marker = tmp_path / "starts"
    env = dict(pg_env, DATABASE_URL=pg_url)
    first = Proc(["worker", "pgapp:app"], env)
    second: Proc | None = None
    try:
        first.wait_for(r"\bready\b")
        handle = app.enqueue("pgapp.sleeper", [4, str(marker)])
        first.wait_for(r"started .*pgapp.sleeper")
        second = Proc(["worker", "pgapp:app"], env)
        second.wait_for(r"\bready\b")
        ended = 0
        with psycopg.connect(conninfo(pg_url), autocommit=True) as admin:
            deadline = time.monotonic() + 2.5
            while time.monotonic() < deadline:
                ended += len(admin.execute(
                    "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
                    "WHERE application_name LIKE %s",
                    (f"crashonly worker %:{first.pid}:%",),
                ).fetchall())
                time.sleep(0.15)
        assert ended >= 2  # the owner did come back between the cuts
        first.wait_for(r"succeeded .*pgapp.sleeper", timeout=10)
        assert len(marker.read_text().splitlines()) == 1, second.text()
        assert not [line for line in second.lines if "dead_workers" in line], second.text()
        job = app.get_job(handle.id)
        assert job.state is JobState.DONE and job.attempts == 1 and job.deaths == 0
    finally:
        first.stop()
        if second is not None:
            second.stop()
        app.close()
