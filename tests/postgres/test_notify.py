"""LISTEN/NOTIFY wake-ups: an idle worker hears a new job at once instead of polling."""

from __future__ import annotations

import statistics
import threading
import time

import pytest

import crashonly
from crashonly.backends.postgres import PostgresBackend
from crashonly.job import NewJob
from tests.processes.harness import Proc

pytestmark = pytest.mark.postgres
NOW = 1_800_000_000.0


def _job(queue: str = "default", run_at: float = NOW) -> NewJob:
    return NewJob(task="t", queue=queue, payload='{"args":[],"kwargs":{}}', run_at=run_at)


def test_wait_for_change_wakes_on_a_ready_job_not_on_a_scheduled_one(pg_url: str) -> None:
    waiter, producer = PostgresBackend(pg_url), PostgresBackend(pg_url)
    try:
        assert waiter.wait_for_change(0) is True  # starts listening
        producer.put([_job(run_at=NOW + 60)], now=NOW)  # scheduled: nothing to wake for
        assert waiter.wait_for_change(0.2) is False
        woke: list[float] = []

        def wait() -> None:
            start = time.monotonic()
            if waiter.wait_for_change(10):
                woke.append(time.monotonic() - start)

        thread = threading.Thread(target=wait)
        thread.start()
        time.sleep(0.2)
        producer.put([_job()], now=NOW)
        thread.join(10)
        assert woke and woke[0] < 5, "woken by the timeout, not by the notification"
        assert waiter.wait_for_change(0.1) is False  # one wake-up per change, none left over
    finally:
        waiter.close()
        producer.close()


def test_release_recovery_and_kick_wake_listeners(pg_url: str) -> None:
    backend = PostgresBackend(pg_url)
    store_now = [NOW]
    backend.store_clock = lambda: store_now[0]
    try:
        backend.wait_for_change(0)
        [job_id] = backend.put([_job()], now=NOW)
        assert backend.wait_for_change(1) is True
        backend.reserve(worker_id="gone", queues=["default"], limit=1, now=NOW)
        assert backend.wait_for_change(0.1) is False  # a claim makes nothing ready
        store_now[0] += 3600  # "gone" never registered: only its lease ends its claim
        assert backend.recover(now=NOW).requeued == [job_id]
        assert backend.wait_for_change(1) is True
        assert backend.bury(job_id, "by hand", now=NOW)
        assert backend.kick([job_id], now=NOW) == 1
        assert backend.wait_for_change(1) is True
    finally:
        backend.close()


def test_idle_worker_starts_a_new_job_promptly(pg_url: str, pg_env: dict[str, str]) -> None:
    """Sanity only: the numbers against the 5 ms p50 target are in bench/RESULTS.md."""
    app = crashonly.App(pg_url)
    app.migrate()
    proc = Proc(["worker", "pgapp:app"], dict(pg_env, DATABASE_URL=pg_url))
    try:
        proc.wait_for(r"\bready\b")
        time.sleep(0.3)  # let it go idle, listening
        delays = []
        for _ in range(20):
            enqueued = time.time()
            started = app.enqueue("pgapp.stamp").wait(5)
            delays.append(started - enqueued)
            time.sleep(0.02)
        # Polling every second would put the median near 0.5 s.
        assert statistics.median(delays) < 0.25, delays
        assert max(delays) < 2, delays
    finally:
        proc.stop()
        app.close()
