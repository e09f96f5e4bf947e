"""A worker process that dies holding jobs: survivors notice (no lease expiry needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import crashonly
from crashonly.job import JobState
from tests.conftest import ROOT
from tests.semantics.conftest import FakeClock, needs

HOLDER = textwrap.dedent("""
    import json, os, socket, sys, time
    import crashonly
    from crashonly.backends import WorkerInfo
    app = crashonly.App(sys.argv[1])
    now = float(sys.argv[2])
    app.backend.store_clock = lambda: now  # the test's fake clock
    app.backend.register_worker(WorkerInfo(id="doomed", host=socket.gethostname(),
        pid=os.getpid(), started_at=now, heartbeat_at=now))
    got, _ = app.backend.reserve(worker_id="doomed", queues=["default"], limit=1, now=now)
    print(json.dumps([r.job.id for r in got]), flush=True)
    time.sleep(60)
""")


def test_jobs_of_a_killed_worker_return_at_once(app: crashonly.App, clock: FakeClock) -> None:
    needs(app, "multi_process")  # an in-memory database cannot be shared with another process
    handle = app.enqueue("t")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, app.url, str(clock.now)],
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert json.loads(line) == [handle.id]
        assert app.get_job(handle.id).state is JobState.RESERVED
        app.recover()
        assert app.get_job(handle.id).state is JobState.RESERVED  # alive: nothing to do
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
    report = app.recover()  # same clock: the lease (30 s) has not expired
    assert handle.id in report.requeued and "doomed" in report.dead_workers
    job = app.get_job(handle.id)
    assert job.state is JobState.READY and job.deaths == 1
    assert "doomed" not in [w.id for w in app.backend.workers()]
