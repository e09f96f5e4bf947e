"""Many processes on one PostgreSQL queue: every job exactly once, no stale ack applied."""

from __future__ import annotations

import time

import psycopg
import pytest

import crashonly
from tests.postgres.conftest import conninfo
from tests.processes.harness import Proc
from tests.processes.test_many_processes import check_stale_acks_refused

pytestmark = pytest.mark.postgres
JOBS = 20_000


def test_four_worker_processes_twenty_thousand_jobs(pg_url: str, pg_env: dict[str, str]) -> None:
    app = crashonly.App(pg_url)
    app.migrate()
    handles = app.enqueue_many([("pgapp.noop", [], {})] * JOBS)
    env = dict(pg_env, DATABASE_URL=pg_url)
    procs = [Proc(["worker", "pgapp:app"], env) for _ in range(4)]
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if app.stats()["default"]["done"] == JOBS:
                break
            time.sleep(0.1)
        stats = app.stats()["default"]
        assert stats["done"] == JOBS, stats
        with psycopg.connect(conninfo(pg_url)) as conn:
            attempts, workers = conn.execute(
                f"SELECT max(attempts), count(DISTINCT worker) FROM {app.backend.schema}.jobs"  # type: ignore[attr-defined]
            ).fetchone()  # type: ignore[misc]
        assert attempts == 1, "a job was claimed twice without anyone dying"
        assert workers >= 2, "one process did all the work: the test proved nothing"
        assert handles[0].id < handles[-1].id
    finally:
        for p in procs:
            p.stop()
        app.close()


def test_four_consumers_stale_acks_refused(pg_url: str) -> None:
    """The worker issue's 4-process, 20,000-job consumer script, on PostgreSQL: one consumer is slow,
    its leases expire, its jobs go to others and its late acks must be refused."""
    check_stale_acks_refused(pg_url)
