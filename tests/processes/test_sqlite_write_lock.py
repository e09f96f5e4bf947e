"""SQLite's one write lock and a transactional job that holds it: past ``transaction_timeout``
the job's transaction is rolled back so writers go on; a *stopped* holder is named to the
writers that time out (crashonly.backends.sqlite_lock)."""

from __future__ import annotations

import signal
import time

import pytest

import crashonly
from crashonly.backends.sqlite_lock import describe_holder
from crashonly.job import JobState
from tests.apps.stallapp import register
from tests.processes.harness import Proc, effects, wait_until, worker


def _path(db_url: str) -> str:
    return db_url.removeprefix("sqlite:///").split("?")[0]


def test_a_job_past_its_transaction_timeout_lets_writers_in(
    db_url: str, subprocess_env: dict[str, str], procs: list[Proc]
) -> None:
    app = crashonly.App(db_url)
    handle = app.enqueue("workapp.two_writes", args=["slow", 4.0])
    w = worker(db_url + "?transaction_timeout=0.5", subprocess_env)
    procs.append(w)
    w.wait_for("started")
    assert wait_until(lambda: describe_holder(_path(db_url)) is not None)  # in its transaction
    t0 = time.monotonic()
    app.enqueue("workapp.noop")  # waits for the lock: half a second, not four
    waited = time.monotonic() - t0
    assert waited < 2.0, f"an enqueue waited {waited:.2f} s behind a transactional job"
    assert wait_until(lambda: handle.job.attempts == 1 and handle.job.state is not JobState.RESERVED,
                      timeout=10)
    job = handle.job
    assert "transaction_timeout of 0.5 s" in (job.last_error or "")
    # Rolled back: the write before the timeout, and the one after it was refused, not
    # committed on its own outside the transaction.
    assert effects(_path(db_url)) == {}
    app.close()


def test_a_stopped_holder_is_named_and_resuming_it_frees_the_lock(
    db_url: str, subprocess_env: dict[str, str], procs: list[Proc]
) -> None:
    """The issue's case: the worker running a transactional job is stopped (SIGSTOP)."""
    app = crashonly.App(db_url)
    handle = app.enqueue("workapp.two_writes", args=["stopped", 3.0])
    w = worker(db_url + "?transaction_timeout=1", subprocess_env)
    procs.append(w)
    w.wait_for("started")
    assert wait_until(lambda: describe_holder(_path(db_url)) is not None)  # in its transaction
    w.signal(signal.SIGSTOP)
    impatient = crashonly.App(db_url + "?busy_timeout=0.5")
    with pytest.raises(crashonly.BackendUnavailable) as caught:
        impatient.enqueue("workapp.noop")
    message = str(caught.value)
    assert f"process {w.pid} (" in message and "stopped by a signal" in message, message
    assert f"kill -CONT {w.pid}" in message and "\n" not in message
    time.sleep(1.0)  # stopped past its transaction_timeout
    w.signal(signal.SIGCONT)  # resumed: the watchdog rolls the job back at once
    t0 = time.monotonic()
    app.enqueue("workapp.noop")
    assert time.monotonic() - t0 < 2.0
    assert wait_until(lambda: "transaction_timeout" in (handle.job.last_error or ""), timeout=10)
    assert effects(_path(db_url)) == {}
    impatient.close()
    app.close()


def test_a_keeper_that_waited_for_the_write_lock_says_so(
    db_url: str, subprocess_env: dict[str, str], procs: list[Proc]
) -> None:
    """Another process's long write (a 300,000-job enqueue, a transactional job) makes the
    keeper late; its `late` line must name the wait, not blame a GIL or a pause."""
    import sqlite3

    app = crashonly.App(db_url)
    register(app)
    app.tasks["stallapp.short"].enqueue(6.0)  # held: its lease is renewed every 2/3 s
    app.close()
    w = worker(db_url, subprocess_env, app="stallapp:app")
    procs.append(w)
    w.wait_for(r"\bstarted\b")
    time.sleep(0.6)  # one keeper pass on its own
    conn = sqlite3.connect(_path(db_url), isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")  # the write lock, held 3 s
    time.sleep(3.0)
    conn.execute("COMMIT")
    conn.close()
    line = w.wait_for(r"\blate\b", timeout=5)
    assert "waited for the store" in line and "GIL" not in line, line
