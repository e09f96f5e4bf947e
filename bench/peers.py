"""Side by side: crashonly's worker against RQ, Celery, Dramatiq, Huey and arq.

    .venv/bin/python bench/peers.py [--jobs N] [--runs K] [--only NAME,...] [--write]

The same workload for every system, one run, peers installed from the ``bench`` extra
(``pip install -e '.[bench]'``), Redis at 127.0.0.1:6379 (db 15, flushed between runs; db 0 is
never touched). Scenarios, each repeated ``--runs`` times and reported as medians:

* **drain** — N no-op jobs enqueued first, then one worker process at concurrency 1, and two
  processes; jobs/s between the first and the last job leaving the queue (start-up excluded),
  capped at ``--drain-cap`` seconds.
* **cold** — spawn → first already-queued job *started* (the job writes a timestamp), against
  the floor ``python -c "import APP"``.
* **term** — worker A runs a 5 s job, worker B is up and idle; SIGTERM to A's main process:
  how long A takes to exit, and what became of the job (finished by A, run again on B and
  when, or lost).
* **kill** — as term, but SIGKILL to A's process group: when the job runs again on B (capped
  at ``--kill-cap`` seconds; a run that hits the cap is not repeated).

Every worker runs in its own session and is killed as a group when its run ends; temp files
live in one temporary directory removed at exit. Progress goes to stderr, the table to stdout;
``--write`` also replaces this benchmark's section of ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import collections
import contextlib
import importlib
import json
import os
import platform
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PEER_DIR = ROOT / "bench" / "peers"
RESULTS = ROOT / "bench" / "RESULTS.md"
BIN = Path(sys.executable).parent
REDIS_URL = "redis://127.0.0.1:6379/15"
BEGIN, END = "<!-- bench/peers.py:begin -->", "<!-- bench/peers.py:end -->"
WORK_SECONDS = 5.0
TERM_CAP = 30.0  # a worker still alive this long after SIGTERM is SIGKILLed
RERUN_CAP = 20.0  # after SIGTERM, how long to wait for the job to run again

LIVE: set[Worker] = set()


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- processes ----------------------------------------------------------------------------


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (RQ's work horse calls setsid, so killpg misses it)."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children[ppid].append(int(entry))
    out, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


class Worker:
    """A worker process in its own session; its output goes to a log file. ``tag`` is in its
    environment as ``BENCH_WORKER``, and the jobs it runs write it to their marker lines."""

    def __init__(self, cmd: Sequence[str], env: dict[str, str], log: Path, tag: str) -> None:
        self.log_path = log
        self.tag = tag
        self._log = open(log, "wb")  # closed in kill()
        self.spawned = time.time()
        self.popen = subprocess.Popen(
            list(cmd), cwd=PEER_DIR, env={**env, "BENCH_WORKER": tag},
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.known: set[int] = set()  # descendants seen so far: killed even once orphaned
        LIVE.add(self)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float) -> bool:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if rx.search(self.text()):
                return True
            if self.popen.poll() is not None:
                return bool(rx.search(self.text()))
            time.sleep(0.01)
        return False

    def wait_exit(self, timeout: float) -> float | None:
        """Seconds until the main process exited, or None after ``timeout``."""
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.popen.poll() is not None:
                return time.time() - t0
            time.sleep(0.002)
        return None

    def snapshot(self) -> None:
        if self.popen.poll() is None:
            self.known |= descendants(self.popen.pid)

    def kill(self) -> None:
        """SIGKILL the process group and every descendant seen, then reap."""
        self.snapshot()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        for pid in self.known:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        self.known.clear()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(10)
        self._log.close()
        LIVE.discard(self)


def kill_all() -> None:
    for w in list(LIVE):
        w.kill()


# --- the systems --------------------------------------------------------------------------


@dataclass
class Mark:
    what: str
    ts: float
    who: str  # the tag of the worker that ran the job


def read_marks(path: Path) -> list[Mark]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3:
            out.append(Mark(parts[0], float(parts[1]), parts[2]))
    return out


class System:
    """One peer: how to start its worker, enqueue, count what is left, and reset."""

    name = ""
    label = ""
    module = ""  # what the workers import: the floor is `python -c "import MODULE"`
    ready = ""  # a log line that says the worker is taking jobs
    scenarios: frozenset[str] = frozenset({"drain", "cold", "term", "kill"})

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.run = 0

    def env(self) -> dict[str, str]:
        # Without PYTHONDONTWRITEBYTECODE (set in some shells and CI images) every start would
        # compile the modules whose .pyc is missing; without PYTHONUNBUFFERED, as deployed.
        drop = ("BENCH_", "DATABASE_", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED")
        env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
        env.update(PYTHONPATH=str(PEER_DIR), BENCH_REDIS_URL=REDIS_URL,
                   PATH=f"{BIN}:{env.get('PATH', '')}")
        return env

    def command(self) -> list[str]:
        raise NotImplementedError

    def reset(self) -> None:
        self.run += 1

    def enqueue(self, task: str, calls: Sequence[tuple[Any, ...]]) -> None:
        raise NotImplementedError

    def remaining(self) -> int:
        """Jobs enqueued and not finished (queued, prefetched or held by a worker)."""
        raise NotImplementedError

    def spawn(self, tag: str) -> Worker:
        tag = f"{self.name}-{self.run}-{tag}"
        return Worker(self.command(), self.env(), self.tmp / f"{tag}.log", tag)

    def close(self) -> None:
        pass


def redis() -> Any:
    import redis as redis_py

    return redis_py.Redis.from_url(REDIS_URL)


class RedisSystem(System):
    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp)
        self.r = redis()

    def reset(self) -> None:
        super().reset()
        self.r.flushdb()  # db 15 only

    def close(self) -> None:
        self.r.flushdb()
        self.r.close()


class Crashonly(System):
    name, label, module = "crashonly", "crashonly (SQLite, FULL)", "co_app"
    ready = r"\bready\b"
    query = ""

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp)
        self.app: Any = None

    @property
    def url(self) -> str:
        return f"sqlite:///{self.tmp}/{self.name}-{self.run}.db{self.query}"

    def env(self) -> dict[str, str]:
        return {**super().env(), "DATABASE_URL": self.url}

    def command(self) -> list[str]:
        return [str(BIN / "crashonly"), "worker", "co_app:app", "--concurrency", "1"]

    def reset(self) -> None:
        import crashonly

        self.close()
        super().reset()
        self.app = crashonly.App(self.url)
        self.app.migrate()

    def enqueue(self, task: str, calls: Sequence[tuple[Any, ...]]) -> None:
        for i in range(0, len(calls), 5000):
            self.app.enqueue_many([(f"co_app.{task}", c, {}) for c in calls[i:i + 5000]])

    def remaining(self) -> int:
        return sum(n for states in self.app.stats().values()
                   for s, n in states.items() if s in ("ready", "reserved", "scheduled"))

    def close(self) -> None:
        if self.app is not None:
            self.app.close()
            self.app = None


class CrashonlyNormal(Crashonly):
    name, label = "crashonly-normal", "crashonly (SQLite, NORMAL)"
    query = "?synchronous=NORMAL"
    scenarios = frozenset({"drain"})


class RQ(RedisSystem):
    name, label, module = "rq", "RQ (Worker: fork per job)", "rq_app"
    ready = r"Listening on"
    worker_class = "rq.worker.Worker"

    def command(self) -> list[str]:
        return [str(BIN / "rq"), "worker", "--url", REDIS_URL, "-w", self.worker_class, "default"]

    def _queue(self) -> Any:
        from rq import Queue

        return Queue("default", connection=self.r)

    def enqueue(self, task: str, calls: Sequence[tuple[Any, ...]]) -> None:
        from rq import Queue

        q = self._queue()
        for i in range(0, len(calls), 2000):
            with self.r.pipeline() as pipe:
                q.enqueue_many([Queue.prepare_data(f"rq_app.{task}", args=c)
                                for c in calls[i:i + 2000]], pipeline=pipe)
                pipe.execute()

    def remaining(self) -> int:
        q = self._queue()
        return q.count + self.r.llen(q.intermediate_queue_key) + q.started_job_registry.count


class RQSimple(RQ):
    name, label = "rq-simple", "RQ (SimpleWorker)"
    worker_class = "rq.worker.SimpleWorker"


class Celery(RedisSystem):
    name, label, module = "celery", "Celery (Redis, solo pool)", "celery_app"
    ready = r"ready\."

    def command(self) -> list[str]:
        return [str(BIN / "celery"), "-A", "celery_app", "worker", "-P", "solo",
                "--without-mingle", "--without-gossip", "-l", "info"]

    def enqueue(self, task: str, calls: Sequence[tuple[Any, ...]]) -> None:
        from celery import Celery as CeleryApp

        app = CeleryApp("bench-producer", broker=REDIS_URL)
        with app.producer_or_acquire() as producer:
            for c in calls:
                app.send_task(f"celery_app.{task}", args=c, producer=producer)
        app.close()

    def remaining(self) -> int:
        return int(self.r.llen("celery")) + int(self.r.hlen("unacked"))


class Dramatiq(RedisSystem):
    name, label, module = "dramatiq", "Dramatiq (Redis, 1 proc, 1 thread)", "dramatiq_app"
    ready = r"Worker process is ready"

    def command(self) -> list[str]:
        return [str(BIN / "dramatiq"), "dramatiq_app", "--processes", "1", "--threads", "1"]

    def enqueue(self, task: str, calls: Sequence[tuple[Any, ...]]) -> None:
        from dramatiq import Message
        from dramatiq.brokers.redis import RedisBroker

        broker = RedisBroker(url=REDIS_URL)
        broker.declare_queue("default")
        for c in calls:
            broker.enqueue(Message(queue_name="default", actor_name=task, args=c, kwargs={},
                                   options={}))
        broker.close()

    def remaining(self) -> int:
        return int(self.r.hlen("dramatiq:default.msgs"))


def _huey_app() -> Any:
    """The peer module, imported here only to serialize its tasks' messages."""
    saved = os.environ.get("BENCH_HUEY_STORAGE")
    os.environ["BENCH_HUEY_STORAGE"] = "redis"  # RedisHuey connects lazily: no file created
    try:
        if str(PEER_DIR) not in sys.path:
            sys.path.insert(0, str(PEER_DIR))
        return importlib.import_module("huey_app")
    finally:
        if saved is None:
            del os.environ["BENCH_HUEY_STORAGE"]
        else:
            os.environ["BENCH_HUEY_STORAGE"] = saved


class HueySQLite(System):
    name, label, module = "huey-sqlite", "Huey (SQLite, WAL, FULL)", "huey_app"
    ready = r"consumer started"

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp)
        self.storage: Any = None

    @property
    def path(self) -> Path:
        return self.tmp / f"{self.name}-{self.run}.db"

    def env(self) -> dict[str, str]:
        return {**super().env(), "BENCH_HUEY_STORAGE": "sqlite", "BENCH_HUEY_DB": str(self.path)}

    def command(self) -> list[str]:
        return [str(BIN / "huey_consumer"), "huey_app.huey", "-w", "1", "-k", "thread"]

    def _open(self) -> Any:
        from huey.storage import SqliteStorage

        return SqliteStorage(name="bench", filename=str(self.path), fsync=True)

    def reset(self) -> None:
        self.close()
        super().reset()
        self.storage = self._open()

    def _messages(self, task: str, calls: Sequence[tuple[Any, ...]]) -> list[bytes]:
        mod = _huey_app()
        fn = getattr(mod, task)
        return [mod.huey.serialize_task(fn.s(*c)) for c in calls]

    def enqueue(self, task: str, calls: Sequence[tuple[Any, ...]]) -> None:
        rows = [("bench", sqlite3.Binary(m), 0) for m in self._messages(task, calls)]
        with self.storage.db(commit=True) as curs:
            curs.executemany("insert into task (queue, data, priority) values (?, ?, ?)", rows)

    def remaining(self) -> int:
        return int(self.storage.queue_size())

    def close(self) -> None:
        if self.storage is not None:
            self.storage.close()
            self.storage = None


class HueyRedis(RedisSystem, HueySQLite):
    name, label = "huey-redis", "Huey (Redis)"

    def env(self) -> dict[str, str]:
        return {**System.env(self), "BENCH_HUEY_STORAGE": "redis"}

    def reset(self) -> None:
        RedisSystem.reset(self)
        from huey.storage import RedisStorage

        self.storage = RedisStorage(name="bench", url=REDIS_URL)

    def enqueue(self, task: str, calls: Sequence[tuple[Any, ...]]) -> None:
        msgs = self._messages(task, calls)
        for i in range(0, len(msgs), 2000):
            self.r.lpush(self.storage.queue_key, *msgs[i:i + 2000])

    def close(self) -> None:
        RedisSystem.close(self)


class Arq(RedisSystem):
    name, label, module = "arq", "arq (Redis, max_jobs=1)", "arq_app"
    ready = r"redis_version="

    def env(self) -> dict[str, str]:
        return {**super().env(), "BENCH_ARQ_MAX_JOBS": "1"}

    def command(self) -> list[str]:
        return [str(BIN / "arq"), "arq_app.WorkerSettings"]

    def enqueue(self, task: str, calls: Sequence[tuple[Any, ...]]) -> None:
        from arq import create_pool
        from arq.connections import RedisSettings

        async def go() -> None:
            pool = await create_pool(RedisSettings.from_dsn(REDIS_URL))
            try:
                for c in calls:
                    await pool.enqueue_job(task, *c)
            finally:
                await pool.aclose()

        asyncio.run(go())

    def remaining(self) -> int:
        return int(self.r.zcard("arq:queue"))


class Arq10(Arq):
    name, label = "arq-10", "arq (Redis, default max_jobs=10)"
    scenarios = frozenset({"drain"})

    def env(self) -> dict[str, str]:
        return {**super().env(), "BENCH_ARQ_MAX_JOBS": "10"}


SYSTEMS: dict[str, type[System]] = {s.name: s for s in (
    Crashonly, CrashonlyNormal, RQ, RQSimple, Celery, Dramatiq, HueySQLite, HueyRedis, Arq,
    Arq10)}


# --- scenarios ----------------------------------------------------------------------------


def drain(system: System, procs: int, jobs: int, cap: float) -> float:
    """Jobs/s while ``procs`` fresh workers empty a queue of ``jobs`` no-ops."""
    system.reset()
    system.enqueue("noop", [()] * jobs)
    workers = [system.spawn(f"drain{procs}-{i}") for i in range(procs)]
    try:
        t_spawn = time.monotonic()
        first: tuple[float, int] | None = None
        while True:
            left, now = system.remaining(), time.monotonic()
            if first is None and left < jobs:
                first = (now, left)
            if left == 0:
                break
            if first is None and now - t_spawn > 60:
                raise RuntimeError(f"{system.name}: no job done 60 s after spawn; log:\n"
                                   + workers[0].text()[-2000:])
            if first is not None and now - first[0] > cap:
                break
            time.sleep(0.02)
        assert first is not None
        return (first[1] - left) / max(now - first[0], 1e-6)
    finally:
        for w in workers:
            w.kill()


def wait_mark(path: Path, match: Callable[[Mark], bool], timeout: float) -> Mark | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for m in read_marks(path):
            if match(m):
                return m
        time.sleep(0.005)
    return None


def cold(system: System, runs: int) -> tuple[list[float], list[float]]:
    """(spawn → first queued job started, in ms) per run, after one warm-up."""
    samples, reported = [], []
    for i in range(runs + 1):
        system.reset()
        marker = system.tmp / f"{system.name}-{system.run}.cold"
        system.enqueue("mark", [(str(marker),)])
        w = system.spawn("cold")
        try:
            m = wait_mark(marker, lambda m: m.what == "start", 30)
            if m is None:
                raise RuntimeError(f"{system.name}: job not started in 30 s; log:\n"
                                   + w.text()[-2000:])
            if i:
                samples.append((m.ts - w.spawned) * 1000)
                got = re.search(r"startup_ms=([\d.]+)", w.text())
                if got:
                    reported.append(float(got.group(1)))
        finally:
            w.kill()
    return samples, reported


def import_floor(system: System, runs: int) -> list[float]:
    """`python -c "import MODULE"` wall time in ms, per run, after one warm-up."""
    out = []
    for i in range(runs + 1):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", f"import {system.module}"], cwd=PEER_DIR,
                       env=system.env(), check=True)
        if i:
            out.append((time.perf_counter() - t0) * 1000)
    return out


@dataclass
class Fate:
    exit_s: float | None = None  # SIGTERM only: None = still alive at TERM_CAP
    rerun_s: float | None = None  # None = not run again within the cap
    outcome: str = ""


def _a_running_b_idle(system: System) -> tuple[Worker, Worker, Path]:
    """Worker A running a 5 s job, worker B up and idle, the job ≥ 1 s old."""
    system.reset()
    marker = system.tmp / f"{system.name}-{system.run}.work"
    system.enqueue("work", [(str(marker), WORK_SECONDS)])
    a = system.spawn("A")
    m = wait_mark(marker, lambda m: m.what == "start" and m.who == a.tag, 30)
    if m is None:
        a.kill()
        raise RuntimeError(f"{system.name}: A did not start the job; log:\n" + a.text()[-2000:])
    a.snapshot()  # a forked work horse, so that it dies with A
    b = system.spawn("B")
    if not b.wait_for(system.ready, 15):
        say(f"  {system.name}: B printed no ready line in 15 s; going on")
    time.sleep(max(0.0, m.ts + 1.0 - time.time()))
    return a, b, marker


def _rerun(marker: Path, b: Worker, since: float, timeout: float) -> float | None:
    m = wait_mark(marker, lambda m: m.what == "start" and m.who == b.tag, timeout)
    return None if m is None else m.ts - since


def term(system: System) -> Fate:
    a, b, marker = _a_running_b_idle(system)
    try:
        t = time.time()
        os.kill(a.pid, signal.SIGTERM)  # the main process, as a container runtime does
        fate = Fate(exit_s=a.wait_exit(TERM_CAP))
        a.kill()  # a forked child left behind would otherwise run on
        finished_on_a = any(m.what == "end" and m.who == a.tag for m in read_marks(marker))
        # A job A finished is not expected again; still, watch 2 s for a duplicate.
        wait = 2.0 if finished_on_a else max(0.0, t + RERUN_CAP - time.time())
        fate.rerun_s = _rerun(marker, b, t, wait)
        if fate.rerun_s is not None:
            fate.outcome = ("finished on A and ran again on B" if finished_on_a
                            else "released; ran again on B")
        elif finished_on_a:
            fate.outcome = "finished on A before it exited"
        elif fate.exit_s is None:
            fate.outcome = f"A still running {TERM_CAP:g} s after SIGTERM"
        else:
            left = system.remaining()
            fate.outcome = ("lost: gone from the queue" if left == 0
                            else f"held; not run again in {RERUN_CAP:g} s")
        return fate
    finally:
        a.kill()
        b.kill()


def kill(system: System, cap: float) -> Fate:
    a, b, marker = _a_running_b_idle(system)
    try:
        t = time.time()
        a.kill()  # the group and every descendant: the machine or container is gone
        fate = Fate(rerun_s=_rerun(marker, b, t, cap))
        if fate.rerun_s is not None:
            fate.outcome = "ran again on B"
        else:
            left = system.remaining()
            fate.outcome = (f"lost: gone from the queue (checked after {cap:g} s)" if left == 0
                            else f"held by the dead worker; not run again in {cap:g} s")
        return fate
    finally:
        a.kill()
        b.kill()


# --- reporting ----------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    label: str
    drain1: list[float] = field(default_factory=list)
    drain2: list[float] = field(default_factory=list)
    cold: list[float] = field(default_factory=list)
    cold_reported: list[float] = field(default_factory=list)
    floor: list[float] = field(default_factory=list)
    term: list[Fate] = field(default_factory=list)
    kill: list[Fate] = field(default_factory=list)
    load: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def med(xs: Sequence[float]) -> float | None:
    return statistics.median(xs) if xs else None


def fmt(x: float | None, digits: int = 0, unit: str = "") -> str:
    if x is None:
        return "-"
    return f"{x:,.{digits}f}{unit}"


def ratio(x: float | None, y: float | None) -> str:
    if x is None or y is None or y == 0:
        return "-"
    return f"{x / y:.2f}x"


def fates(fs: list[Fate], cap: float, term_scenario: bool) -> tuple[str, str]:
    if not fs:
        return "-", "-"
    exits = [f.exit_s for f in fs if f.exit_s is not None]
    if term_scenario:
        exit_txt = fmt(med(exits), 2, " s") if exits else f"> {TERM_CAP:g} s"
    else:
        exit_txt = ""
    outcomes = collections.Counter(f.outcome for f in fs)
    reruns = [f.rerun_s for f in fs if f.rerun_s is not None]
    text = "; ".join(o if n == len(fs) else f"{o} ({n}/{len(fs)})" for o, n in outcomes.items())
    if reruns:
        text += f" — again after {fmt(med(reruns), 2, ' s')}"
        if len(reruns) < len(fs):
            text += f" in {len(reruns)}/{len(fs)}"
    elif not term_scenario:
        text = f"never within {cap:g} s: " + text
    runs = f" ({len(fs)} run{'s' if len(fs) > 1 else ''})"
    return exit_txt, text + runs


def table(results: list[Result], kill_cap: float) -> str:
    base = next((r for r in results if r.name == "crashonly"), None)
    b1 = med(base.drain1) if base else None
    b2 = med(base.drain2) if base else None
    bc = med(base.cold) if base else None
    head = ("| System | Drain, 1 proc (jobs/s) | crashonly ÷ it | Drain, 2 procs (jobs/s) "
            "| crashonly ÷ it | Cold start (ms) | it ÷ crashonly | `import APP` (ms) "
            "| cold ÷ import |")
    lines = [head, "|" + "---|" * 9]
    for r in results:
        d1, d2, c, f = med(r.drain1), med(r.drain2), med(r.cold), med(r.floor)
        lines.append(
            f"| {r.label} | {fmt(d1)} | {ratio(b1, d1) if r is not base else '1'} "
            f"| {fmt(d2)} | {ratio(b2, d2) if r is not base else '1'} "
            f"| {fmt(c)} | {ratio(c, bc) if r is not base else '1'} | {fmt(f)} "
            f"| {ratio(c, f)} |")
    lines += ["", "| System | SIGTERM: exit after | SIGTERM: the running 5 s job "
              "| SIGKILL: the running job |", "|---|---|---|---|"]
    for r in results:
        if not r.term and not r.kill:
            continue
        exit_txt, term_txt = fates(r.term, RERUN_CAP, True)
        _, kill_txt = fates(r.kill, kill_cap, False)
        lines.append(f"| {r.label} | {exit_txt} | {term_txt} | {kill_txt} |")
    errors = [f"{r.name}: {e}" for r in results for e in r.errors]
    if errors:
        lines += ["", "Errors:", *[f"- {e}" for e in errors]]
    return "\n".join(lines)


def sh(cmd: str) -> str:
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for pkg in ("crashonly", "rq", "celery", "kombu", "dramatiq", "huey", "arq", "redis"):
        try:
            out.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            pass
    return ", ".join(out)


def section(results: list[Result], args: argparse.Namespace, argv: Sequence[str],
            load_before: tuple[float, ...], load_after: tuple[float, ...]) -> str:
    r = redis()
    info = r.info("server")
    persistence = r.config_get("appendonly").get("appendonly"), r.config_get("save").get("save")
    r.close()
    fs_type = [*sh(f"df -T {args.tmp_root} | sed -n 2p").split(), "?", "?"][1]
    loads = ", ".join(f"{r.name} {max(r.load):.2f}" for r in results if r.load)
    cmd = " ".join([".venv/bin/python", "bench/peers.py", *argv])
    return "\n".join([
        "## Peers: the worker against RQ, Celery, Dramatiq, Huey and arq (`bench/peers.py`)",
        "",
        BEGIN,
        f"Command: `{cmd}`  ",
        f"Date: {sh('date')}  ",
        f"Machine: `nproc` {os.cpu_count()}; `free -h`: {sh('free -h | sed -n 2p').split()[1]} "
        f"RAM; {platform.platform()}; Python {platform.python_version()}; SQLite "
        f"{sqlite3.sqlite_version}; temp files on {fs_type}  ",
        f"Redis {info.get('redis_version')} on 127.0.0.1, db 15, persistence off "
        f"(appendonly {persistence[0]}, save \"{persistence[1]}\"): the Redis peers make "
        "nothing durable, crashonly and Huey-SQLite fsync every commit  ",
        f"Versions: {versions()}  ",
        f"Load average (1 min): {load_before[0]:.2f} before, {load_after[0]:.2f} after; the "
        f"highest seen during each system's runs: {loads}  ",
        f"Workload: {args.jobs:,} no-op jobs per drain run (capped at {args.drain_cap:g} s, "
        f"start-up excluded); medians of {args.runs} runs; cold start after one warm-up; "
        f"SIGTERM/SIGKILL on a {WORK_SECONDS:g} s job, 1 s into it, with a second worker idle.",
        "",
        table(results, args.kill_cap),
        END,
    ])


def write_results(text: str) -> None:
    old = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        # Replace only the generated part; the heading above it and notes below it stay.
        gen = text.split(BEGIN, 1)[1].split(END, 1)[0]
        new = head + BEGIN + gen + END + tail
    else:
        new = old.rstrip("\n") + "\n\n" + text + "\n"
    RESULTS.write_text(new)


# --- main ---------------------------------------------------------------------------------


def wait_for_quiet(limit: float, max_wait: float) -> None:
    if limit <= 0:
        return
    deadline = time.monotonic() + max_wait
    while os.getloadavg()[0] > limit and time.monotonic() < deadline:
        say(f"load average {os.getloadavg()[0]:.2f} > {limit}; waiting")
        time.sleep(15)


def bench(system: System, args: argparse.Namespace) -> Result:
    res = Result(system.name, system.label)

    def step(what: str, fn: Callable[[], None]) -> None:
        res.load.append(os.getloadavg()[0])
        try:
            fn()
        except Exception as exc:  # record and go on with the next scenario
            res.errors.append(f"{what}: {exc}".splitlines()[0])
            say(f"  {system.name} {what} FAILED: {exc}")
        finally:
            kill_all()

    sc = system.scenarios & set(args.scenarios)
    if "cold" in sc:
        def do_cold() -> None:
            res.floor = import_floor(system, max(args.runs, 5))
            res.cold, res.cold_reported = cold(system, max(args.runs, 5))
            say(f"  {system.name} cold {fmt(med(res.cold))} ms (import floor "
                f"{fmt(med(res.floor))} ms)")
        step("cold", do_cold)
    for procs, out in ((1, res.drain1), (2, res.drain2)):
        if "drain" not in sc:
            break

        def do_drain(procs: int = procs, out: list[float] = out) -> None:
            for _ in range(args.runs):
                out.append(drain(system, procs, args.jobs, args.drain_cap))
                say(f"  {system.name} drain x{procs}: {out[-1]:,.0f} jobs/s")
        step(f"drain x{procs}", do_drain)
    for scen, fn, into in (("term", lambda: term(system), res.term),
                           ("kill", lambda: kill(system, args.kill_cap), res.kill)):
        if scen not in sc:
            continue

        def do(fn: Callable[[], Fate] = fn, into: list[Fate] = into, scen: str = scen) -> None:
            for _ in range(args.runs):
                f = fn()
                into.append(f)
                say(f"  {system.name} {scen}: exit {fmt(f.exit_s, 2)} s, rerun "
                    f"{fmt(f.rerun_s, 2)} s, {f.outcome}")
                if f.rerun_s is None and not f.outcome.startswith("finished"):
                    break  # it hit the cap: the same wait again teaches nothing
        step(scen, do)
    return res


def parse(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/peers.py", description=__doc__.split("\n\n")[0],
        epilog=f"systems: {', '.join(SYSTEMS)}; scenarios: drain, cold, term, kill")
    p.add_argument("--jobs", type=int, default=10_000, help="no-op jobs per drain run")
    p.add_argument("--runs", type=int, default=3, help="runs per scenario (median reported)")
    p.add_argument("--only", default="", metavar="NAME,...", help="systems to run (default all)")
    p.add_argument("--scenarios", default="drain,cold,term,kill", metavar="NAME,...")
    p.add_argument("--drain-cap", type=float, default=20.0, metavar="S",
                   help="stop a drain run after S seconds and count what was done")
    p.add_argument("--kill-cap", type=float, default=60.0, metavar="S",
                   help="how long to wait for a SIGKILLed worker's job to run again")
    p.add_argument("--wait-load", type=float, default=0.0, metavar="L",
                   help="before starting, wait (up to --max-wait) for the 1-min load below L")
    p.add_argument("--max-wait", type=float, default=600.0, metavar="S")
    p.add_argument("--tmp-root", default="/tmp", help="where temporary databases live")
    p.add_argument("--write", action="store_true", help="update bench/RESULTS.md")
    p.add_argument("--json", metavar="PATH", help="also write the raw numbers as JSON")
    args = p.parse_args(argv)
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    names = [n for n in args.only.split(",") if n] or list(SYSTEMS)
    unknown = set(names) - set(SYSTEMS)
    if unknown:
        p.error(f"unknown system(s) {', '.join(sorted(unknown))}; known: {', '.join(SYSTEMS)}")
    args.names = names
    return args


def main(argv: Sequence[str]) -> int:
    args = parse(argv)
    if any(SYSTEMS[n].__mro__.count(RedisSystem) for n in args.names):
        redis().ping()
    tmp = Path(tempfile.mkdtemp(prefix="crashonly-peers-", dir=args.tmp_root))
    atexit.register(shutil.rmtree, tmp, True)
    atexit.register(kill_all)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: sys.exit(1))
    wait_for_quiet(args.wait_load, args.max_wait)
    load_before = os.getloadavg()
    say(f"load {load_before[0]:.2f}; temp dir {tmp}")
    results = []
    for name in args.names:
        say(f"{name} …")
        system = SYSTEMS[name](tmp)
        try:
            results.append(bench(system, args))
        finally:
            kill_all()
            system.close()
    text = section(results, args, argv, load_before, os.getloadavg())
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps([r.__dict__ for r in results], default=lambda o:
                                              o.__dict__, indent=1))
    if args.write:
        write_results(text)
        say(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
