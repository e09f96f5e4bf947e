"""4 processes reserving and acking 20,000 jobs from one SQLite file at once: each job done
exactly once, none lost, and no stale ack applied (one process is made slow, so its leases
expire, its jobs are handed to others and its late acks must be refused)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import crashonly
from crashonly.job import NewJob
from tests.conftest import ROOT

JOBS = 20_000

CONSUMER = textwrap.dedent("""
    import json, os, socket, sys, time
    import crashonly
    from crashonly.backends import WorkerInfo
    from crashonly.job import Settlement, SettlementKind
    # The slow consumer may keep winning back its own expired jobs, each time alone: that is
    # what poison detection is for, and not what this test is about.
    app = crashonly.App(sys.argv[1], poison_after=10**6)
    slow = sys.argv[2] == "slow"
    b = app.backend
    me = f"consumer-{os.getpid()}"
    now = time.time()
    b.register_worker(WorkerInfo(id=me, host=socket.gethostname(), pid=os.getpid(),
                                 started_at=now, heartbeat_at=now))
    accepted, refused, pending, empty = [], [], [], 0
    while empty < 20:
        if slow:
            app.recover()
        got, bad = b.reserve(worker_id=me, queues=["default"], limit=50, now=time.time(),
                             settle=pending)
        refused += bad
        accepted += [s.job_id for s in pending if s.job_id not in set(bad)]
        pending = []
        if not got:
            empty += 1
            app.recover()
            time.sleep(0.02)
            continue
        empty = 0
        if slow:
            if not accepted and not refused:
                print("claimed", flush=True)  # the others start now: they will find these
            time.sleep(0.4)  # past the 0.25 s lease: these jobs go to someone else
        pending = [Settlement(job_id=r.job.id, token=r.token, kind=SettlementKind.ACK,
                              result=json.dumps(me)) for r in got]
    bad = b.settle(pending, now=time.time())
    refused += bad
    accepted += [s.job_id for s in pending if s.job_id not in set(bad)]
    b.deregister_worker(me)
    print(json.dumps({"me": me, "accepted": accepted, "refused": refused}))
""")


def test_four_processes_twenty_thousand_jobs(db_url: str) -> None:
    check_stale_acks_refused(db_url)


def check_stale_acks_refused(url: str) -> None:
    """Shared with the PostgreSQL suite (tests/postgres/test_many_processes.py)."""
    app = crashonly.App(url)
    now = app.clock()
    job = NewJob(task="t", queue="default", payload='{"args":[],"kwargs":{}}', run_at=now,
                 lease=0.25, max_attempts=1000)
    ids = app.backend.put([job] * JOBS, now=now)
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"}

    def start(kind: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-c", CONSUMER, url, kind],
                                stdout=subprocess.PIPE, text=True, env=env)

    # The slow one claims first, so the fast ones cannot drain everything before it holds any.
    procs = [start("slow")]
    assert procs[0].stdout is not None and procs[0].stdout.readline() == "claimed\n"
    procs += [start("fast") for _ in range(3)]
    reports = []
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0
        reports.append(json.loads(out))
    accepted = [job_id for r in reports for job_id in r["accepted"]]
    assert len(accepted) == len(set(accepted)) == JOBS, "a job was acked twice or not at all"
    assert set(accepted) == set(ids)
    stats = app.stats()["default"]
    assert stats["done"] == JOBS and stats["reserved"] == stats["ready"] == 0
    # The slow consumer's leases expired: some of its acks were refused, none applied.
    slow = reports[0]
    assert slow["refused"], "the slow consumer never lost a lease: the test proved nothing"
    owner = {job_id: r["me"] for r in reports for job_id in r["accepted"]}
    for job_id in slow["refused"][:500]:
        assert app.get_job(job_id).result == owner[job_id] != slow["me"]
    app.close()
