"""Many processes on one PostgreSQL queue: every job exactly once, no stale ack applied."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import psycopg
import pytest

import crashonly
from crashonly.job import NewJob
from tests.conftest import ROOT
from tests.postgres.conftest import conninfo
from tests.processes.harness import Proc
from tests.processes.test_many_processes import CONSUMER

pytestmark = pytest.mark.postgres
JOBS = 20_000
# CONSUMER (shared with the SQLite test) turns poison burial off: the slow consumer's leases
# expire on purpose and it may win its own expired jobs back alone, three times in a row.
assert "poison_after=10**6" in CONSUMER


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
    app = crashonly.App(pg_url)
    now = app.clock()
    job = NewJob(task="t", queue="default", payload='{"args":[],"kwargs":{}}', run_at=now,
                 lease=0.25, max_attempts=1000)
    ids = app.backend.put([job] * JOBS, now=now)
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"}
    procs = [
        subprocess.Popen([sys.executable, "-c", CONSUMER, pg_url, "slow" if i == 0 else "fast"],
                         stdout=subprocess.PIPE, text=True, env=env)
        for i in range(4)
    ]
    reports = []
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0
        reports.append(json.loads(out))
    accepted = [job_id for r in reports for job_id in r["accepted"]]
    assert len(accepted) == len(set(accepted)) == JOBS, "a job was acked twice or not at all"
    assert set(accepted) == set(ids)
    stats = app.stats()["default"]
    assert stats["done"] == JOBS and stats["reserved"] == stats["ready"] == 0
    slow = reports[0]
    assert slow["refused"], "the slow consumer never lost a lease: the test proved nothing"
    owner = {job_id: r["me"] for r in reports for job_id in r["accepted"]}
    for job_id in slow["refused"][:200]:
        assert app.get_job(job_id).result == owner[job_id] != slow["me"]
    app.close()
