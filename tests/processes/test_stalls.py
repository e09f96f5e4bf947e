"""A worker that outlives its own lease (SIGSTOP/SIGCONT, a job holding the GIL) neither jams
its queue nor runs a job twice; on SQLite and PostgreSQL."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

import crashonly
from crashonly.job import JobState
from tests.processes.harness import Proc, wait_until, worker


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


@pytest.mark.parametrize("helper", ["1", "0"])
def test_a_job_holding_the_gil_past_its_lease_runs_once(
    url: str, subprocess_env: dict[str, str], procs: list[Proc], queue: crashonly.App,
    tmp_path: Path, helper: str,
) -> None:
    """One C call keeps the GIL 6 s, three times the lease: the heartbeat helper renews from
    outside the interpreter, so an idle second worker never takes the job."""
    env = dict(subprocess_env, CRASHONLY_HEARTBEAT_HELPER=helper)
    marker = tmp_path / "marker"
    handle = queue.tasks["stallapp.hold_gil"].enqueue(6, str(marker))  # lease 2 s
    first = worker(url, env, app="stallapp:app")
    procs.append(first)
    first.wait_for(rf"started\s+job={handle.id}")
    second = worker(url, env, app="stallapp:app")
    procs.append(second)
    second.wait_for("ready")
    if helper == "0":  # without it, the lease runs out and the job is started again
        assert wait_until(lambda: marker.read_text().count("start") == 2, timeout=10)
        return
    assert handle.wait(15) == "held"
    first.wait_for(r"late\s+seconds=\d")  # the worker says its own renewal came late
    assert marker.read_text().count("start") == 1
    assert f"started   job={handle.id}" not in second.text()
    job = handle.job
    assert job.attempts == 1 and job.deaths == 0
    for w in (first, second):
        w.signal(signal.SIGTERM)
        assert w.wait() == 0
