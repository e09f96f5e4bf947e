"""A PostgreSQL restart under a running job costs the job no attempt (private server)."""

from __future__ import annotations

import signal
import time

import pytest

import crashonly
from crashonly.errors import BackendUnavailable
from crashonly.job import JobState
from tests.apps.stallapp import register
from tests.postgres.conftest import PrivatePostgres, fresh_schema_url
from tests.processes.harness import Proc, worker

pytestmark = pytest.mark.postgres


@pytest.mark.parametrize("task", ["stallapp.enqueue_later", "stallapp.tx_later"])
def test_a_job_that_meets_a_restart_is_not_charged_an_attempt(
    private_pg: PrivatePostgres, subprocess_env: dict[str, str], task: str,
) -> None:
    """Its own enqueue, or its transaction's query, meets the outage: released, and it runs
    to the end once the server is back, though it has one attempt only."""
    url = fresh_schema_url(private_pg.url)
    app = crashonly.App(url)
    register(app)
    app.migrate()
    handle = app.tasks[task].enqueue(1.5)  # max_attempts=1
    w: Proc = worker(url, subprocess_env, app="stallapp:app")
    try:
        w.wait_for(rf"started\s+job={handle.id}")
        private_pg.stop()  # the job's enqueue (1.5 s after its start) meets the outage
        time.sleep(2.5)
        private_pg.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if handle.job.state in (JobState.DONE, JobState.BURIED):
                    break
            except BackendUnavailable:
                pass
            time.sleep(0.1)
        job = handle.job
        assert job.state is JobState.DONE and job.attempts == 1, (job, w.text())
        assert w.popen.poll() is None, w.text()
        w.wait_for(rf"released\s+job={handle.id}.*unavailable", timeout=1)
        w.signal(signal.SIGTERM)
        assert w.wait() == 0
    finally:
        w.stop()
        app.close()
