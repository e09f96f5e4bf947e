"""Queue operation throughput on SQLite, next to a raw-SQL floor on the same file.

    .venv/bin/python bench/queue_ops.py [--jobs 20000] [--runs 3] [--sync FULL,NORMAL]

Measures, for each durability setting (synchronous=FULL, the default, and NORMAL):
* enqueue, one transaction per job (``task.enqueue``) and in one batch (``enqueue_many``);
* reserve+ack of no-op jobs, one job per transaction and in batches of 100 (settlements
  folded into the next claim), with one process and with two processes;
* the raw floor: the same INSERT, claim UPDATE and DELETE written directly with ``sqlite3``,
  no framework, one commit per job and per 100 jobs.
Reports the median of ``--runs`` runs, in jobs/s, and crashonly's share of the floor.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import crashonly
from crashonly.backends import WorkerInfo
from crashonly.job import NewJob, Settlement, SettlementKind

PAYLOAD = '{"args":[],"kwargs":{}}'
OWN = "raw, crashonly's statements, claim+ack x100"


def url(path: str, sync: str) -> str:
    return f"sqlite:///{path}?synchronous={sync}"


def fresh(folder: str, name: str) -> str:
    path = os.path.join(folder, name)
    for suffix in ("", "-wal", "-shm"):
        Path(path + suffix).unlink(missing_ok=True)
    return path


# --- crashonly ----------------------------------------------------------------------------
def enqueue_single(path: str, sync: str, n: int) -> float:
    app = crashonly.App(url(path, sync))
    app.migrate()
    t0 = time.perf_counter()
    for i in range(n):
        app.enqueue("noop", args=[i])
    dt = time.perf_counter() - t0
    app.close()
    return n / dt


def enqueue_batch(path: str, sync: str, n: int) -> float:
    app = crashonly.App(url(path, sync))
    app.migrate()
    t0 = time.perf_counter()
    app.enqueue_many(("noop", [i], {}) for i in range(n))
    dt = time.perf_counter() - t0
    app.close()
    return n / dt


def _consume(path: str, sync: str, batch: int, results: mp.Queue) -> None:  # type: ignore[type-arg]
    app = crashonly.App(url(path, sync))
    b = app.backend
    me = f"bench-{os.getpid()}"
    b.register_worker(WorkerInfo(id=me, host=socket.gethostname(), pid=os.getpid(),
                                 started_at=time.time(), heartbeat_at=time.time()))
    done, pending = 0, []
    t0 = time.perf_counter()
    while True:
        got, _ = b.reserve(worker_id=me, queues=["default"], limit=batch, now=time.time(),
                           settle=pending)
        done += len(pending)
        if not got:
            break
        pending = [Settlement(job_id=r.job.id, token=r.token, kind=SettlementKind.ACK,
                              result="null") for r in got]
    results.put((done, time.perf_counter() - t0))


def reserve_ack(path: str, sync: str, n: int, batch: int, procs: int) -> float:
    app = crashonly.App(url(path, sync))
    now = time.time()
    app.backend.put([NewJob(task="noop", queue="default", payload=PAYLOAD, run_at=now)] * n,
                    now=now)
    app.close()
    results: mp.Queue = mp.Queue()  # type: ignore[type-arg]
    workers = [mp.Process(target=_consume, args=(path, sync, batch, results)) for _ in range(procs)]
    t0 = time.perf_counter()
    for w in workers:
        w.start()
    outs = [results.get() for _ in workers]
    wall = time.perf_counter() - t0
    for w in workers:
        w.join()
    assert sum(o[0] for o in outs) == n, outs
    return n / wall


# --- the raw floor ------------------------------------------------------------------------
RAW_SCHEMA = """
CREATE TABLE jobs (id INTEGER PRIMARY KEY, queue TEXT NOT NULL, state TEXT NOT NULL,
                   priority INTEGER NOT NULL, run_at REAL NOT NULL, payload TEXT NOT NULL,
                   worker TEXT, lease_expires_at REAL);
CREATE INDEX jobs_claim ON jobs (queue, priority, run_at, id) WHERE state = 'ready';
"""
RAW_INSERT = ("INSERT INTO jobs (queue, state, priority, run_at, payload) "
              "VALUES ('default', 'ready', 100, ?, ?)")
RAW_CLAIM = """UPDATE jobs SET state = 'reserved', worker = 'w', lease_expires_at = ?
WHERE id IN (SELECT id FROM jobs WHERE state = 'ready' AND queue = 'default' AND run_at <= ?
             ORDER BY priority, run_at, id LIMIT ?) RETURNING id"""
RAW_DELETE = "DELETE FROM jobs WHERE id = ?"


def raw_connect(path: str, sync: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={sync}")
    return conn


def raw(path: str, sync: str, n: int, batch: int) -> tuple[float, float]:
    """(insert jobs/s, claim+delete jobs/s) with ``batch`` jobs per commit."""
    conn = raw_connect(path, sync)
    conn.executescript(RAW_SCHEMA)
    t0 = time.perf_counter()
    for start in range(0, n, batch):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(RAW_INSERT, [(time.time(), PAYLOAD)] * min(batch, n - start))
        conn.execute("COMMIT")
    insert = n / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    ids: list[int] = []
    while True:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(RAW_DELETE, [(i,) for i in ids])
        now = time.time()
        ids = [r[0] for r in conn.execute(RAW_CLAIM, (now + 30, now, batch)).fetchall()]
        conn.execute("COMMIT")
        if not ids:
            break
    consume = n / (time.perf_counter() - t0)
    conn.close()
    return insert, consume


def raw_own(path: str, sync: str, n: int, batch: int) -> float:
    """crashonly's own schema and statements (claim_next, ack_many), driven with bare sqlite3:
    the cost of the schema (retention, leases, recovery indexes) without the framework's."""
    from crashonly.backends.sqlite import Q

    conn = raw_connect(path, sync)
    for version in (1, 2):
        conn.executescript(Q[f"migration_{version}"])
    now = time.time()
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(Q["insert_job"], [("noop", "default", "ready", 100, PAYLOAD, 5, 30.0, now, now,
                                        None)] * n)
    conn.execute("COMMIT")
    t0 = time.perf_counter()
    acks: list[list[object]] = []
    while True:
        now = time.time()
        conn.execute("BEGIN IMMEDIATE")
        if acks:
            conn.execute(Q["ack_many"], {"acks": json.dumps(acks), "now": now})
        rows = conn.execute(Q["claim_next"], {"worker": "w", "token": 7, "now": now,
                                              "queue": "default", "limit": batch}).fetchall()
        conn.execute("COMMIT")
        if not rows:
            break
        acks = [[r[0], 7, "null"] for r in rows]
    rate = n / (time.perf_counter() - t0)
    conn.close()
    return rate


def median_of(runs: int, fn: Callable[[], float]) -> float:
    return statistics.median(fn() for _ in range(runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--single-jobs", type=int, default=2_000,
                        help="jobs for the one-commit-per-job measurements (they are slow at FULL)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sync", default="FULL,NORMAL")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    n, n1 = args.jobs, args.single_jobs
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="crashonly-bench-") as folder:
        for sync in args.sync.split(","):
            r: dict[str, float] = {}

            def step(name: str, fn: Callable[[], float], _r: dict[str, float] = r,
                     sync: str = sync) -> None:
                print(f"[{sync}] {name} ...", file=sys.stderr, flush=True)
                _r[name] = median_of(args.runs, fn)
                print(f"[{sync}] {name}: {_r[name]:,.0f} jobs/s", file=sys.stderr, flush=True)

            step("raw insert x1", lambda sync=sync: raw(fresh(folder, "raw.db"), sync, n1, 1)[0])
            step("raw claim+delete x1", lambda sync=sync: raw(fresh(folder, "raw.db"), sync, n1, 1)[1])
            step("raw insert x100", lambda sync=sync: raw(fresh(folder, "raw.db"), sync, n, 100)[0])
            step("raw claim+delete x100", lambda sync=sync: raw(fresh(folder, "raw.db"), sync, n, 100)[1])
            step(OWN, lambda sync=sync: raw_own(fresh(folder, "own.db"), sync, n, 100))
            step("enqueue x1", lambda sync=sync: enqueue_single(fresh(folder, "q.db"), sync, n1))
            step("enqueue batch", lambda sync=sync: enqueue_batch(fresh(folder, "q.db"), sync, n))
            def consume(jobs: int, batch: int, procs: int, sync: str = sync) -> float:
                return reserve_ack(fresh(folder, "q.db"), sync, jobs, batch, procs)

            step("reserve+ack x1, 1 proc", lambda: consume(n1, 1, 1))
            step("reserve+ack x100, 1 proc", lambda: consume(n, 100, 1))
            step("reserve+ack x100, 2 procs", lambda: consume(n, 100, 2))
            results[sync] = r
    if args.json:
        print(json.dumps(results, indent=1))
        return
    print(f"\n{n:,} jobs (one-commit-per-job rows: {n1:,}), median of {args.runs} runs, jobs/s\n")
    print("| measurement | " + " | ".join(f"synchronous={s}" for s in results) + " |")
    print("|---|" + "---:|" * len(results))
    for name in next(iter(results.values())):
        print(f"| {name} | " + " | ".join(f"{r[name]:,.0f}" for r in results.values()) + " |")
    print("\nshare of the raw floor (same batching):")
    for sync, r in results.items():
        print(f"- {sync}: enqueue x1 {r['enqueue x1'] / r['raw insert x1']:.0%}, "
              f"batch enqueue {r['enqueue batch'] / r['raw insert x100']:.0%} of x100 inserts, "
              f"reserve+ack x1 {r['reserve+ack x1, 1 proc'] / r['raw claim+delete x1']:.0%}, "
              f"reserve+ack x100 {r['reserve+ack x100, 1 proc'] / r['raw claim+delete x100']:.0%} "
              f"(of the same statements bare: "
              f"{r['reserve+ack x100, 1 proc'] / r[OWN]:.0%})")


if __name__ == "__main__":
    main()
