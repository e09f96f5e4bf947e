"""The database restarting or refusing connections: nothing lost, no crash loop.

These stop and restart a private server (``private_pg``), never the shared one.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

import crashonly
from crashonly.backends import WorkerInfo
from crashonly.backends.postgres import PostgresBackend
from crashonly.errors import BackendUnavailable
from crashonly.job import JobState, NewJob, Settlement, SettlementKind
from tests.postgres.conftest import PrivatePostgres, create_effects, effects, fresh_schema_url
from tests.processes.harness import Proc

pytestmark = pytest.mark.postgres
NOW = 1_800_000_000.0
JOBS = 300


def _job() -> NewJob:
    return NewJob(task="t", queue="default", payload='{"args":[],"kwargs":{}}', run_at=NOW,
                  lease=600)


def _elsewhere(worker_id: str) -> WorkerInfo:
    return WorkerInfo(id=worker_id, host="another-machine", pid=4242, started_at=NOW,
                      heartbeat_at=NOW)


def test_restart_under_a_running_worker(private_pg: PrivatePostgres, pg_env: dict[str, str]) -> None:
    url = fresh_schema_url(private_pg.url)
    app = crashonly.App(url)
    app.migrate()
    create_effects(url)
    app.enqueue_many([("pgapp.effect", [f"k{i}", 0.005], {}) for i in range(JOBS)])
    proc = Proc(["worker", "pgapp:app", "--concurrency", "2"], dict(pg_env, DATABASE_URL=url))
    try:
        proc.wait_for(r"\bready\b")
        proc.wait_for(r"succeeded .*pgapp.effect")
        private_pg.restart()
        restarted_at = len(proc.lines)
        deadline = time.monotonic() + 60
        done = 0
        while time.monotonic() < deadline:
            try:
                done = app.stats()["default"]["done"]
            except BackendUnavailable:  # this process's pool meets the restart too
                pass
            if done == JOBS:
                break
            time.sleep(0.1)
        assert done == JOBS, proc.text()
        assert proc.popen.poll() is None, "the worker exited:\n" + proc.text()
        proc.wait_for(r"\berror\b.*unavailable", timeout=1, start=restarted_at - 5)
        counted = effects(url)
        assert len(counted) == JOBS and set(counted.values()) == {1}
        assert app.stats()["default"]["buried"] == 0
        proc.signal(signal.SIGTERM)
        assert proc.wait() == 0
    finally:
        proc.stop()
        app.close()


def test_lock_lost_to_a_restart_is_not_a_death(private_pg: PrivatePostgres) -> None:
    """A restart drops every lock at once. Workers that come back keep their jobs (no false
    death blamed on them); one that does not come back within the grace is dead."""
    url = fresh_schema_url(private_pg.url)
    watcher, back, gone = PostgresBackend(url), PostgresBackend(url), PostgresBackend(url)
    watcher.RESTART_GRACE = 1.0
    try:
        kept_id, lost_id = watcher.put([_job(), _job()], now=NOW)
        back.register_worker(_elsewhere("comes-back"))
        gone.register_worker(_elsewhere("never-returns"))
        [kept], _ = back.reserve(worker_id="comes-back", queues=["default"], limit=1, now=NOW)
        [lost], _ = gone.reserve(worker_id="never-returns", queues=["default"], limit=1, now=NOW)
        assert (kept.job.id, lost.job.id) == (kept_id, lost_id)
        private_pg.restart()
        gone.close()  # its process died during the outage
        started = time.monotonic()
        with pytest.raises(BackendUnavailable):
            watcher.get(kept_id)  # its pooled connection was cut: reported, not hidden
        assert not watcher.recover(now=NOW)  # within the grace: nobody is dead yet
        with pytest.raises(BackendUnavailable):
            back.recover(now=NOW)  # re-takes its lock, then meets its own cut connection
        assert not back.recover(now=NOW)  # the pool was rebuilt
        while time.monotonic() - started < 1.5:
            time.sleep(0.1)
        report = watcher.recover(now=NOW)
        assert report.dead_workers == ["never-returns"] and report.requeued == [lost_id]
        ack = Settlement(job_id=kept_id, token=kept.token, kind=SettlementKind.ACK, result="1")
        assert back.settle([ack], now=NOW) == []
        assert watcher.get(kept_id).state is JobState.DONE  # type: ignore[union-attr]
        assert watcher.get(lost_id).deaths == 1  # type: ignore[union-attr]
    finally:
        for b in (watcher, back, gone):
            b.close()


def test_refused_connections_fail_fast_and_recover(private_pg: PrivatePostgres) -> None:
    url = fresh_schema_url(private_pg.url)
    backend = PostgresBackend(url)
    try:
        [job_id] = backend.put([_job()], now=NOW)
        private_pg.stop()
        started = time.monotonic()
        with pytest.raises(BackendUnavailable, match=r"refused|shut|closed|terminat"):
            backend.get(job_id)
        with pytest.raises(BackendUnavailable, match="Connection refused"):
            backend.get(job_id)
        assert time.monotonic() - started < 5
        assert backend.wait_for_change(0.1) is False  # no server: sleeps, never raises
        private_pg.start()
        assert backend.get(job_id).state is JobState.READY  # type: ignore[union-attr]
    finally:
        backend.close()


def test_worker_started_while_the_server_is_down_waits_for_it(
    private_pg: PrivatePostgres, pg_env: dict[str, str]
) -> None:
    url = fresh_schema_url(private_pg.url)
    private_pg.stop()
    proc = Proc(["worker", "pgapp:app"], dict(pg_env, DATABASE_URL=url))
    try:
        time.sleep(2)
        assert proc.popen.poll() is None, "the worker exited:\n" + proc.text()
        private_pg.start()
        proc.wait_for(r"\bready\b", timeout=15)
    finally:
        proc.stop()
    assert os.path.exists(private_pg.dir)
