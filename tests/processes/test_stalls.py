"""A worker that outlives its own lease (SIGSTOP/SIGCONT, a job holding the GIL) neither jams
its queue nor runs a job twice; on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import crashonly
from crashonly.job import JobState
from tests.apps.stallapp import register
from tests.processes.harness import Proc, wait_until, worker
from tests.semantics.postgres_factory import postgres_url


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        return postgres_url(tmp_path, request)
    return f"sqlite:///{tmp_path / 'queue.db'}"


@pytest.fixture
def queue(url: str) -> Iterator[crashonly.App]:
    app = crashonly.App(url)
    register(app)
    app.migrate()
    yield app
    app.close()


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for p in started:
        p.stop()


def test_a_worker_paused_past_its_lease_does_not_jam(
    url: str, subprocess_env: dict[str, str], procs: list[Proc], queue: crashonly.App,
    tmp_path: Path,
) -> None:
    marker = tmp_path / "marker"
    long = queue.tasks["stallapp.steps"].enqueue(4, str(marker))  # lease 3 s
    w = worker(url, subprocess_env, "--concurrency", "1", app="stallapp:app")
    procs.append(w)
    w.wait_for(rf"started\s+job={long.id}")
    time.sleep(1)
    w.signal(signal.SIGSTOP)  # a VM pause, a swap storm: the lease runs out meanwhile
    time.sleep(5)
    w.signal(signal.SIGCONT)
    shorts = [queue.tasks["stallapp.short"].enqueue() for _ in range(5)]
    for h in shorts:
        assert h.wait(20) == "short", w.text()
    assert long.wait(20) == "done", w.text()
    w.signal(signal.SIGTERM)
    assert w.wait() == 0
    assert queue.backend.list(state=JobState.RESERVED) == []
    assert all(h.job.state is JobState.DONE for h in [long, *shorts])
