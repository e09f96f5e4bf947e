"""PostgreSQL side by side: crashonly's worker against procrastinate and pgqueuer, and the floor.

    .venv/bin/python bench/postgres_peers.py [--jobs N] [--runs K] [--samples M] [--write]

Peers come from the ``bench`` extra (``pip install -e '.[bench]'``). Everything runs against
the PostgreSQL at 127.0.0.1:5432 in a database of its own, ``crashonly_bench``, dropped and
created again before each run (the shared ``test`` database is never touched). Scenarios,
each repeated ``--runs`` times and reported as medians:

* **drain** — N no-op jobs enqueued first, then one worker process at concurrency 1, and two;
  jobs/s between the first and the last job done (start-up excluded), read from each system's
  own table every 10 ms.
* **latency** — one idle worker; ``--samples`` times: enqueue one job whose handler appends
  ``time.time()`` to a file, wait for it; enqueue call → handler start, p50 / p99.
* **kill** (crashonly only) — worker A runs a 30 s job, worker B idles; SIGKILL to A: when the
  job starts again on B. The peers' figures (pgqueuer ≈31 s, procrastinate never without its
  stalled-job task) are quoted from issue 4, not re-measured here (each costs 30 s or more).
* **floor** — what psycopg alone does with the same server: insert, claim with
  ``FOR UPDATE SKIP LOCKED`` and delete, one row per statement and 64 per statement, each
  statement its own (durable) transaction, one process.

Progress goes to stderr, the table to stdout; ``--write`` also replaces this benchmark's
section of ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parent.parent
ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
DB = "crashonly_bench"
DSN = f"postgresql://postgres@127.0.0.1:5432/{DB}"
CO_URL = f"{DSN}?schema=bench"
SECTION = "## PostgreSQL: crashonly against procrastinate and pgqueuer (`bench/postgres_peers.py`)"

CO_APP = """
import os, time
import crashonly
app = crashonly.App(os.environ["DATABASE_URL"])

@app.task
def noop():
    return None

@app.task
def stamp():
    with open(os.environ["BENCH_STAMPS"], "a") as f:
        f.write(f"{time.time()}\\n")

@app.task(lease=60)
def sleeper(seconds, marker):
    with open(marker, "a") as f:
        f.write(f"{os.getpid()} {time.time()}\\n")
    time.sleep(seconds)
"""

PROCRASTINATE_APP = f"""
import os, time
import procrastinate
app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo={DSN!r}))

@app.task(name="noop")
async def noop():
    return None

@app.task(name="stamp")
async def stamp():
    with open(os.environ["BENCH_STAMPS"], "a") as f:
        f.write(f"{{time.time()}}\\n")

if __name__ == "__main__":
    app.run_worker(concurrency=1, wait=True)
"""

PGQUEUER_APP = f"""
import asyncio, os, sys, time
import psycopg
from pgqueuer import PgQueuer
from pgqueuer.db import PsycopgDriver

async def main():
    if os.environ.get("PGQ_DRIVER") == "psycopg":
        conn = await psycopg.AsyncConnection.connect({DSN!r}, autocommit=True)
        pgq = PgQueuer(PsycopgDriver(conn))
    else:  # its documented default driver
        import asyncpg
        from pgqueuer.db import AsyncpgDriver

        pgq = PgQueuer(AsyncpgDriver(await asyncpg.connect({DSN!r})))
    limit = int(os.environ.get("PGQ_LIMIT", "0"))

    @pgq.entrypoint("noop", concurrency_limit=limit)
    async def noop(job):
        return None

    @pgq.entrypoint("stamp")
    async def stamp(job):
        with open(os.environ["BENCH_STAMPS"], "a") as f:
            f.write(f"{{time.time()}}\\n")

    await pgq.run()

asyncio.run(main())
"""


def log(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def reset_database() -> None:
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE datname = %s AND pid <> pg_backend_pid()", (DB,))
        conn.execute(f"DROP DATABASE IF EXISTS {DB}")
        conn.execute(f"CREATE DATABASE {DB}")


def drop_database() -> None:
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE datname = %s AND pid <> pg_backend_pid()", (DB,))
        conn.execute(f"DROP DATABASE IF EXISTS {DB}")


class System:
    """How to install, enqueue into, run and watch one queue."""

    name = ""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.stamps = tmp / "stamps"
        self.env = dict(os.environ, PYTHONPATH=f"{tmp}{os.pathsep}{ROOT / 'src'}",
                        DATABASE_URL=CO_URL, BENCH_STAMPS=str(self.stamps),
                        PYTHONUNBUFFERED="1")

    def install(self) -> None: ...

    def enqueue(self, task: str, n: int) -> None: ...

    def done(self, conn: psycopg.Connection[Any], n: int) -> int: ...

    def worker_cmd(self) -> list[str]: ...

    def start_worker(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.worker_cmd(), env=self.env, cwd=self.tmp,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)


class Crashonly(System):
    name = "crashonly"

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp)
        (tmp / "co_pg.py").write_text(CO_APP)
        import crashonly

        self._crashonly = crashonly
        self.app: Any = None

    def install(self) -> None:
        if self.app is not None:
            self.app.close()
        self.app = self._crashonly.App(CO_URL)
        self.app.migrate()

    def enqueue(self, task: str, n: int) -> None:
        if n == 1:
            self.app.enqueue(f"co_pg.{task}")
        else:
            for i in range(0, n, 5000):
                self.app.enqueue_many([(f"co_pg.{task}", [], {})] * min(5000, n - i))

    def done(self, conn: psycopg.Connection[Any], n: int) -> int:
        row = conn.execute("SELECT count(*) FROM bench.jobs WHERE state = 'done'").fetchone()
        return int(row[0]) if row else 0

    def worker_cmd(self) -> list[str]:
        return [sys.executable, "-m", "crashonly.cli", "worker", "co_pg:app"]


class Procrastinate(System):
    name = "procrastinate"

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp)
        (tmp / "pr_pg.py").write_text(PROCRASTINATE_APP)
        self.loop = asyncio.new_event_loop()

    def _app(self) -> Any:
        sys.path.insert(0, str(self.tmp))
        import pr_pg  # type: ignore[import-not-found]

        return pr_pg.app

    def install(self) -> None:
        async def go() -> None:
            app = self._app()
            async with app.open_async():
                await app.schema_manager.apply_schema_async()
        self.loop.run_until_complete(go())

    def enqueue(self, task: str, n: int) -> None:
        async def go() -> None:
            app = self._app()
            async with app.open_async():
                t = app.tasks[task]
                if n == 1:
                    await t.defer_async()
                else:
                    for i in range(0, n, 5000):
                        await t.batch_defer_async(*([{}] * min(5000, n - i)))
        self.loop.run_until_complete(go())

    def done(self, conn: psycopg.Connection[Any], n: int) -> int:
        row = conn.execute(
            "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'"
        ).fetchone()
        return int(row[0]) if row else 0

    def worker_cmd(self) -> list[str]:
        return [sys.executable, "pr_pg.py"]


class Pgqueuer(System):
    name = "pgqueuer"

    def __init__(self, tmp: Path, limit: int = 0, driver: str = "asyncpg") -> None:
        super().__init__(tmp)
        (tmp / "pq_pg.py").write_text(PGQUEUER_APP)
        self.env["PGQ_LIMIT"] = str(limit)
        self.env["PGQ_DRIVER"] = driver
        self.name = f"pgqueuer ({driver}" + (f", concurrency_limit={limit})" if limit else ")")
        self.loop = asyncio.new_event_loop()

    def _run(self, fn: Callable[[Any], Any]) -> None:
        async def go() -> None:
            from pgqueuer import Queries
            from pgqueuer.db import PsycopgDriver

            conn = await psycopg.AsyncConnection.connect(DSN, autocommit=True)
            try:
                await fn(Queries(PsycopgDriver(conn)))
            finally:
                await conn.close()
        self.loop.run_until_complete(go())

    def install(self) -> None:
        self._run(lambda q: q.install())

    def enqueue(self, task: str, n: int) -> None:
        async def go(q: Any) -> None:
            if n == 1:
                await q.enqueue(task, None)
            for i in range(0, n if n > 1 else 0, 5000):
                k = min(5000, n - i)
                await q.enqueue([task] * k, [None] * k, [0] * k)
        self._run(go)

    def done(self, conn: psycopg.Connection[Any], n: int) -> int:
        row = conn.execute("SELECT count(*) FROM pgqueuer WHERE entrypoint = 'noop'").fetchone()
        return n - (int(row[0]) if row else 0)

    def worker_cmd(self) -> list[str]:
        return [sys.executable, "pq_pg.py"]


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()


def drain(system: System, jobs: int, processes: int, cap: float = 120.0) -> float:
    reset_database()
    system.install()
    system.enqueue("noop", jobs)
    procs = [system.start_worker() for _ in range(processes)]
    first_t = first_n = None
    try:
        with psycopg.connect(DSN, autocommit=True) as conn:
            deadline = time.monotonic() + cap
            while time.monotonic() < deadline:
                n = system.done(conn, jobs)
                now = time.monotonic()
                if first_t is None and n > 0:
                    first_t, first_n = now, n
                if n >= jobs:
                    assert first_t is not None and first_n is not None
                    return (jobs - first_n) / max(now - first_t, 1e-6)
                time.sleep(0.01)
            return float("nan")
    finally:
        stop(procs)


def latency(system: System, samples: int) -> list[float]:
    reset_database()
    system.install()
    system.stamps.unlink(missing_ok=True)
    system.stamps.touch()
    procs = [system.start_worker()]
    try:
        system.enqueue("stamp", 1)  # warm up: the worker is up and has run one job
        deadline = time.monotonic() + 30
        while len(system.stamps.read_text().splitlines()) < 1:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{system.name}: the warm-up job never ran")
            time.sleep(0.01)
        time.sleep(0.5)
        delays = []
        for i in range(samples):
            t0 = time.time()
            system.enqueue("stamp", 1)
            deadline = time.monotonic() + 10
            while len(lines := system.stamps.read_text().splitlines()) < i + 2:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{system.name}: job {i} never ran")
                time.sleep(0.0005)
            delays.append(float(lines[i + 1]) - t0)
            time.sleep(0.05)  # idle again
        return delays
    finally:
        stop(procs)


def kill_rerun(system: Crashonly) -> float:
    reset_database()
    system.install()
    marker = system.tmp / "marker"
    marker.unlink(missing_ok=True)
    a = system.start_worker()
    procs = [a]
    try:
        time.sleep(1.0)
        system.app.enqueue("co_pg.sleeper", [30, str(marker)])
        deadline = time.monotonic() + 20
        while not marker.exists() or not marker.read_text():
            if time.monotonic() > deadline:
                raise RuntimeError("the job never started")
            time.sleep(0.005)
        procs.append(system.start_worker())
        time.sleep(1.0)
        killed = time.time()
        os.killpg(a.pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while len(lines := marker.read_text().splitlines()) < 2:
            if time.monotonic() > deadline:
                return float("nan")
            time.sleep(0.002)
        return float(lines[1].split()[1]) - killed
    finally:
        stop(procs)


def floor(jobs: int, batch: int) -> dict[str, float]:
    reset_database()
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute("CREATE TABLE raw_jobs (id bigserial PRIMARY KEY, payload text NOT NULL, "
                     "state text NOT NULL DEFAULT 'ready')")
        conn.execute("CREATE INDEX raw_ready ON raw_jobs (id) WHERE state = 'ready'")
        out: dict[str, float] = {}
        t = time.perf_counter()
        n = 0
        while n < jobs:
            k = min(batch, jobs - n)
            conn.execute("INSERT INTO raw_jobs (payload) SELECT '{}' FROM generate_series(1, %s)",
                         (k,))
            n += k
        out["insert"] = jobs / (time.perf_counter() - t)
        t = time.perf_counter()
        done = 0
        while True:
            ids = [r[0] for r in conn.execute(
                "UPDATE raw_jobs SET state = 'doing' WHERE id IN (SELECT id FROM raw_jobs "
                "WHERE state = 'ready' ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED) RETURNING id",
                (batch,))]
            if not ids:
                break
            conn.execute("DELETE FROM raw_jobs WHERE id = ANY(%s)", (ids,))
            done += len(ids)
        out["claim+delete"] = done / (time.perf_counter() - t)
    return out


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    with psycopg.connect(ADMIN) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    server = row[0] if row else "?"
    return (f"{os.cpu_count()} cores ({cpu}), Linux {platform.release()}, Python "
            f"{platform.python_version()}, PostgreSQL {server} (local, default config, "
            "fsync on)")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def write_section(section: str, text: str) -> None:
    """Put ``text`` in bench/RESULTS.md in place of the section headed ``section`` (or at the
    end when there is none yet)."""
    results = ROOT / "bench" / "RESULTS.md"
    old = results.read_text() if results.exists() else ""
    pattern = re.compile(re.escape(section) + r".*?(?=\n## |\Z)", re.S)
    new = pattern.sub(lambda _: text.rstrip("\n") + "\n", old) if section in old else (
        old.rstrip("\n") + "\n\n" + text if old else text)
    results.write_text(new)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--only", default="", help="comma-separated system names")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="crashonly-pgbench-"))
    load_before = os.getloadavg()
    started = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    try:
        systems: list[System] = [Crashonly(tmp), Procrastinate(tmp), Pgqueuer(tmp),
                                 Pgqueuer(tmp, driver="psycopg")]
        if args.only:
            systems = [s for s in systems if s.name.split(" ")[0] in args.only.split(",")]
        rows = []
        for system in systems:
            one, two, lat = [], [], []
            for run in range(args.runs):
                one.append(drain(system, args.jobs, 1))
                two.append(drain(system, args.jobs, 2))
                lat += latency(system, args.samples)
                log(f"{system.name} run {run + 1}: drain 1 proc {one[-1]:.0f}/s, "
                    f"2 procs {two[-1]:.0f}/s, latency p50 {pct(lat, 0.5) * 1000:.1f} ms")
            kill = "≈31 s (issue 4)" if system.name.startswith("pgqueuer") else (
                "never (issue 4)" if system.name == "procrastinate" else "")
            if isinstance(system, Crashonly):
                times = [kill_rerun(system) for _ in range(args.runs)]
                log(f"crashonly kill → re-run: {times}")
                kill = f"{statistics.median(times):.2f} s (max {max(times):.2f})"
                system.app.close()
            rows.append((system.name, statistics.median(one), statistics.median(two),
                         pct(lat, 0.5) * 1000, pct(lat, 0.99) * 1000, kill))
        floors = {b: [floor(args.jobs, b) for _ in range(args.runs)] for b in (1, 64)}
    finally:
        drop_database()
        shutil.rmtree(tmp, ignore_errors=True)
    load_after = os.getloadavg()
    lines = [
        SECTION, "",
        f"Run {started} on {machine()}; load average {load_before[0]:.1f} before, "
        f"{load_after[0]:.1f} after (2 cores shared with other work). "
        f"Medians of {args.runs} runs; {args.jobs:,} no-op jobs per drain, "
        f"{args.samples} latency samples per run. Command: `.venv/bin/python "
        f"bench/postgres_peers.py --jobs {args.jobs} --runs {args.runs} --samples "
        f"{args.samples}`.", "",
        "| system | drain, 1 process (jobs/s) | drain, 2 processes (jobs/s) | "
        "enqueue → start p50 | p99 | SIGKILL → job runs again |",
        "|---|---|---|---|---|---|",
    ]
    for name, one_p, two_p, p50, p99, kill in rows:
        lines.append(f"| {name} | {one_p:,.0f} | {two_p:,.0f} | {p50:.1f} ms | {p99:.1f} ms "
                     f"| {kill} |")
    lines += ["", "Raw-SQL floor (psycopg alone, one process, each statement its own durable "
              "transaction; jobs/s):", "",
              "| rows per statement | insert | claim (`SKIP LOCKED`) + delete |", "|---|---|---|"]
    for b, runs in floors.items():
        lines.append(f"| {b} | {statistics.median(r['insert'] for r in runs):,.0f} | "
                     f"{statistics.median(r['claim+delete'] for r in runs):,.0f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        write_section(SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
