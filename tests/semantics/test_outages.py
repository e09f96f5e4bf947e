"""An outage of the store is not the job's fault: no attempt is counted, on every backend."""

from __future__ import annotations

import pytest

import crashonly
from crashonly.job import JobState
from tests.semantics.conftest import FakeClock


def test_a_job_meeting_an_outage_is_released_without_an_attempt(
    app: crashonly.App, clock: FakeClock,
) -> None:
    @app.task(name="reaches.out", max_attempts=1)
    def reaches_out() -> None:
        raise crashonly.BackendUnavailable("PostgreSQL at db:5432 is unavailable")

    handle = reaches_out.enqueue()
    for _ in range(3):
        app.drain()
        job = handle.job
        assert job.state is JobState.SCHEDULED and job.attempts == 0, job  # never buried
        clock.advance(5)


def test_a_full_disk_at_commit_counts_no_attempt(app: crashonly.App, clock: FakeClock) -> None:
    if not app.url.startswith("sqlite:///") or app.url.endswith(":memory:"):
        pytest.skip("SQLite file only: max_page_count makes SQLite answer 'disk is full'")
    full = {"on": True}

    @app.task(name="writes.much", transactional=True, max_attempts=1)
    def writes_much() -> str:
        db = crashonly.current_job().db
        db.execute("CREATE TABLE IF NOT EXISTS blobs (b BLOB)")
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        db.execute(f"PRAGMA max_page_count = {pages + 2 if full['on'] else 1 << 30}")
        db.execute("INSERT INTO blobs VALUES (?)", (b"x" * 200_000,))
        return "written"

    handle = writes_much.enqueue()
    app.drain()
    job = handle.job
    assert job.state is JobState.SCHEDULED and job.attempts == 0, job
    full["on"] = False  # space is freed
    clock.advance(5)
    app.drain()
    assert handle.wait(1) == "written" and handle.job.attempts == 1
