"""A graceful stop on a full disk is not a death (SQLite): the worker cannot release its job nor
deregister, so it leaves a mark beside its lock that recovery reads as "stopped" — the job goes
back with no death and no attempt counted. A SIGKILLed worker leaves no mark and is blamed."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import crashonly
from crashonly.job import Job, JobState
from tests.processes.harness import Proc, wait_until, worker
from tests.unit.test_sqlite_files import _fill, small_volume  # noqa: F401 (a fixture)


@pytest.fixture
def running(small_volume: Path, subprocess_env: dict[str, str]  # noqa: F811
            ) -> Iterator[tuple[crashonly.App, Proc, int, Path]]:
    """A worker on a SQLite DB on a small tmpfs running one job that ignores cancellation,
    with the disk then filled."""
    url = f"sqlite:///{small_volume / 'q.db'}"
    app = crashonly.App(url)
    app.migrate()
    job_id = app.enqueue("workapp.sleeper", args=[60]).id
    w = worker(url, subprocess_env, "--grace", "1")
    try:
        w.wait_for(rf"started\s+job={job_id}")
        filler = small_volume / "filler"
        _fill(filler)
        yield app, w, job_id, filler
    finally:
        w.stop()
        app.close()


def _recovered(app: crashonly.App, job_id: int) -> Job:
    # Another process (this test) recovers once the worker is gone and space is freed.
    app.backend.recover(now=time.time())
    job = app.get_job(job_id)
    assert job is not None
    return job


def test_a_graceful_stop_that_cannot_write_is_not_blamed(
        running: tuple[crashonly.App, Proc, int, Path]) -> None:
    app, w, job_id, filler = running
    w.signal(signal.SIGTERM)
    assert w.wait() == 0
    assert any("could not release" in line or "deregister failed" in line for line in w.lines), \
        w.text()  # the disk really was full when it stopped
    filler.unlink()
    job = _recovered(app, job_id)
    assert job.state is JobState.READY, job
    assert job.deaths == 0 and job.attempts == 0, job  # no death, no attempt counted
    marks = list((filler.parent / "q.db-workers").iterdir())
    assert marks == [], marks  # the mark is removed once acted on


def test_a_killed_worker_on_a_full_disk_is_still_blamed(
        running: tuple[crashonly.App, Proc, int, Path]) -> None:
    app, w, job_id, filler = running
    w.signal(signal.SIGKILL)
    w.wait()
    filler.unlink()
    assert wait_until(lambda: _recovered(app, job_id).state is JobState.READY, timeout=5)
    job = _recovered(app, job_id)
    assert job.deaths == 1 and job.attempts == 1, job
