"""The worker loop: reserve → run → settle, and a shutdown that hands every job back.

Threads, each with one job:

* **main** — the dispatch loop. It alone reserves, starts jobs and settles them, so the
  bookkeeping (``running``, ``buffer``, ``pending``) needs no lock except for the keeper's
  snapshot. It blocks on one queue that receives job completions, signals and wake-ups.
* **pool** — a bounded thread pool for sync handlers; async handlers run on one event loop in
  its own thread.
* **keeper** — every half second runs recovery (dead workers' jobs back to ready), and about
  every lease/3 renews the leases of the jobs this worker holds and its own heartbeat. It goes
  on during the shutdown grace, so a job is never timed out while it is being drained.
* **waker** — blocks in ``backend.wait_for_change`` (LISTEN/NOTIFY, or SQLite's data_version)
  and wakes main when new work may be there, so an idle worker does not poll the queue.

Shutdown (SIGTERM/SIGINT) is one function, :meth:`Worker._shutdown`: stop reserving, hand back
prefetched jobs at once, cancel running jobs and give them the grace, release what is left,
deregister, exit. A second signal ends the grace at once.
"""

from __future__ import annotations

import collections
import os
import queue
import random
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..backends import WorkerInfo
from ..errors import CrashonlyError
from ..execution import Outcome, Prepared, prepare, run_async, run_sync
from ..job import Reservation, Settlement, SettlementKind
from ..lifecycle import Shutdown, notify
from .events import EventLog

if TYPE_CHECKING:
    import asyncio

    from ..app import App
    from ..context import JobContext

__all__ = ["Worker", "WorkerConfig"]

_WAKE = object()
_RECOVER_EVERY = 0.5
_FLUSH_AFTER = 0.02  # settle finished jobs at least this often when nothing else commits
_MAX_PREFETCH = 64


@dataclass(frozen=True, kw_only=True, slots=True)
class WorkerConfig:
    queues: tuple[str, ...] = ()
    concurrency: int = 1
    grace: float = 10.0
    prefetch: int | None = None  # None: adapt to job duration
    log_format: str = "text"


@dataclass(kw_only=True, slots=True)
class Running:
    reservation: Reservation
    started: float
    cancelled: threading.Event = field(default_factory=threading.Event)
    context: JobContext | None = None
    task: asyncio.Task[Outcome] | None = None
    lost: bool = False


@dataclass(kw_only=True)
class Counts:
    succeeded: int = 0
    failed: int = 0
    buried: int = 0
    released: int = 0
    lost: int = 0

    def add(self, status: str) -> None:
        key = {"retrying": "failed"}.get(status, status)
        setattr(self, key, getattr(self, key) + 1)


class Worker:
    def __init__(self, app: App, config: WorkerConfig, *, log: EventLog | None = None,
                 shutdown: Shutdown | None = None) -> None:
        self.app = app
        self.config = config
        self.backend = app.backend
        self.id = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
        self.log = log or EventLog(config.log_format, worker=self.id)
        self.log.worker = self.id
        self.queues = list(config.queues) or sorted({t.queue for t in app.tasks.values()}) or ["default"]
        self.shutdown = shutdown or Shutdown()
        self.inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.running: dict[int, Running] = {}
        self.buffer: collections.deque[Reservation] = collections.deque()
        self.pending: list[Settlement] = []
        self.pending_logs: dict[int, tuple[str, dict[str, Any]]] = {}  # logged once committed
        self.pending_since = 0.0
        self.counts = Counts()
        self.held_lock = threading.Lock()  # guards running/buffer snapshots for the keeper
        self.stop_threads = threading.Event()
        self.pool = ThreadPoolExecutor(max_workers=config.concurrency, thread_name_prefix="job")
        self.loop: asyncio.AbstractEventLoop | None = None
        self.avg_duration = 0.05

    # --- life cycle -------------------------------------------------------------------------
    def run(self) -> int:
        """Start, work until a signal, shut down; returns the exit code."""
        if not self.shutdown.installed:
            self.shutdown.install()
        self.shutdown.on_signal(lambda: self.inbox.put(_WAKE))
        try:
            self.backend.migrate()
            report = self.app.recover()
            now = self.app.clock()
            self.backend.register_worker(WorkerInfo(
                id=self.id, host=socket.gethostname(), pid=os.getpid(), started_at=now,
                heartbeat_at=now, queues=self.queues, concurrency=self.config.concurrency,
            ))
            if any(t.is_async for t in self.app.tasks.values()):
                self._start_loop()
            for target, name in ((self._keeper, "keeper"), (self._waker, "waker")):
                threading.Thread(target=target, name=name, daemon=True).start()
            ready_ms = _since_exec_ms()
            notify("READY=1")
            self.log("ready", queues=",".join(self.queues), concurrency=self.config.concurrency,
                     pid=os.getpid(), startup_ms=ready_ms,
                     recovered=len(report.requeued) or None)
            self.log.flush()
            self._loop()
            return self._shutdown()
        finally:
            self.shutdown.restore()

    def _loop(self) -> None:
        idle = False
        backoff = 0.0
        while not self.shutdown.requested.is_set():
            self._collect(timeout=0.5 if idle or len(self.running) >= self.config.concurrency
                          else 0.0)
            if self.shutdown.requested.is_set():
                break
            try:
                idle = self._step()
                backoff = 0.0
            except CrashonlyError as exc:
                backoff = min(5.0, max(0.1, backoff * 2))
                self.log("error", error=str(exc), retry_in=f"{backoff:.1f}s")
                self.log.flush()
                self.shutdown.requested.wait(backoff * random.uniform(0.8, 1.2))
                idle = True
            self.log.flush()

    def _step(self) -> bool:
        """Start what can start, fetch more if there is room; True when there was nothing."""
        free = self.config.concurrency - len(self.running)
        while free > 0 and self.buffer:
            self._start(self.buffer.popleft())
            free -= 1
        now = self.app.clock()
        if free > 0 and not self.buffer:
            limit = free + self._prefetch()
            got, refused = self.backend.reserve(
                worker_id=self.id, queues=self.queues, limit=limit, now=now, settle=self.pending
            )
            self._settled(refused)
            with self.held_lock:
                self.buffer.extend(got)
            while free > 0 and self.buffer:
                self._start(self.buffer.popleft())
                free -= 1
            return not got and not self.running
        if self.pending and (len(self.pending) >= _MAX_PREFETCH
                             or time.monotonic() - self.pending_since >= _FLUSH_AFTER):
            self._flush()
        return False

    def _prefetch(self) -> int:
        if self.config.prefetch is not None:
            return self.config.prefetch
        # Claim enough to cover ~20 ms of work per transaction: short jobs share commits,
        # long jobs are not hoarded away from other workers.
        return max(0, min(_MAX_PREFETCH, int(0.02 / max(self.avg_duration, 1e-5)) - 1))

    def _flush(self) -> None:
        if self.pending:
            self._settled(self.backend.settle(self.pending, now=self.app.clock()))

    def _settled(self, refused: list[int]) -> None:
        """The pending settlements committed, but for ``refused``: now log their fate."""
        refused_ids = set(refused)
        for s in self.pending:
            status, fields = self.pending_logs.pop(s.job_id, ("released", {"job": s.job_id}))
            if s.job_id in refused_ids:
                status = "lost"
                fields = {**fields, "reason": "lease lost before the ack: not applied"}
                fields.pop("error", None)
            self.counts.add(status)
            self.log(status, **fields)
        self.pending = []

    # --- running jobs -----------------------------------------------------------------------
    def _start(self, r: Reservation) -> None:
        run = Running(reservation=r, started=time.monotonic())
        with self.held_lock:
            self.running[r.job.id] = run
        self.log("started", job=r.job.id, task=r.job.task, attempt=r.job.attempts)
        task = self.app.tasks.get(r.job.task)
        if task is not None and task.is_async and self.loop is not None:
            p = prepare(self.app, r, run.cancelled)
            if isinstance(p, Prepared):
                self.loop.call_soon_threadsafe(self._start_async, run, p)
                return
            self.inbox.put((r.job.id, p))
            return

        def on_start(ctx: JobContext) -> None:
            run.context = ctx

        def call() -> None:
            try:
                outcome = run_sync(self.app, r, run.cancelled, on_start)
            except BaseException as exc:  # never lose the completion
                outcome = Outcome(status="retrying", error=repr(exc), settlement=Settlement(
                    job_id=r.job.id, token=r.token, kind=SettlementKind.FAIL, error=repr(exc)))
            self.inbox.put((r.job.id, outcome))

        self.pool.submit(call)

    def _start_async(self, run: Running, p: Prepared) -> None:
        assert self.loop is not None
        job_id = run.reservation.job.id
        run.task = self.loop.create_task(run_async(self.app, p))
        run.task.add_done_callback(lambda t: self.inbox.put((job_id, t.result())))

    def _collect(self, timeout: float) -> None:
        """Take completions (waiting up to ``timeout`` for the first) and decide their fate."""
        try:
            item = self.inbox.get(timeout=timeout) if timeout > 0 else self.inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            if item is not _WAKE:
                self._finished(*item)
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                return

    def _finished(self, job_id: int, outcome: Outcome) -> None:
        with self.held_lock:
            run = self.running.pop(job_id, None)
        if run is None:
            return
        r = run.reservation
        self.avg_duration = 0.8 * self.avg_duration + 0.2 * outcome.duration
        status = "lost" if run.lost else outcome.status
        fields: dict[str, Any] = {"job": job_id, "task": r.job.task,
                                  "ms": round(outcome.duration * 1000, 1)}
        if outcome.error and status != "succeeded":
            fields["error"] = outcome.error
        if status == "lost":
            fields["reason"] = "lease lost while running: another worker owns it now"
        if outcome.settlement is None or run.lost:
            self.counts.add(status)  # committed already (transactional), or not ours to settle
            self.log(status, **fields)
            return
        if not self.pending:
            self.pending_since = time.monotonic()
        self.pending.append(outcome.settlement)
        self.pending_logs[job_id] = (status, fields)
        if outcome.settlement.kind is SettlementKind.RELEASE:
            self._flush()  # give it back at once

    # --- shutdown ---------------------------------------------------------------------------
    def _shutdown(self) -> int:
        """Stop reserving → hand back prefetched jobs → cancel and wait up to the grace →
        release what is left → deregister."""
        t0 = time.monotonic()
        self.log("stopping", signal=_signame(self.shutdown.received), running=len(self.running),
                 grace=self.config.grace)
        self.log.flush()
        notify("STOPPING=1")
        with self.held_lock:
            prefetched, self.buffer = list(self.buffer), collections.deque()
        self.pending += [_release(r) for r in prefetched]
        for r in prefetched:
            self.pending_logs[r.job.id] = ("released", {"job": r.job.id, "task": r.job.task,
                                                        "reason": "prefetched, not started"})
        self._flush_quietly()
        for run in list(self.running.values()):
            run.cancelled.set()
            if run.task is not None and self.loop is not None:
                self.loop.call_soon_threadsafe(run.task.cancel)
        deadline = t0 + self.config.grace
        while self.running and not self.shutdown.immediate.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._collect(timeout=min(0.05, remaining))
            if self.pending and any(s.kind is SettlementKind.RELEASE for s in self.pending):
                self._flush_quietly()
        self._collect(timeout=0.0)
        stuck = list(self.running.values())
        for run in stuck:
            if run.context is not None and run.context.db is not None:
                self.backend.abort(run.context.db)
            self.pending.append(_release(run.reservation))
            self.pending_logs[run.reservation.job.id] = ("released", {
                "job": run.reservation.job.id, "task": run.reservation.job.task,
                "reason": "still running when the grace ended"})
        self._flush_quietly()
        self.stop_threads.set()
        try:
            self.backend.deregister_worker(self.id)
        except CrashonlyError as exc:
            self.log("error", error=f"deregister failed: {exc}")
        c = self.counts
        self.log("shutdown", succeeded=c.succeeded, failed=c.failed, buried=c.buried,
                 released=c.released, lost=c.lost,
                 ms=round((time.monotonic() - t0) * 1000, 1))
        self.log.flush()
        if stuck:
            # Threads cannot be killed: their jobs are released (committed above), so leave
            # without joining them.
            os._exit(0)
        self.pool.shutdown(wait=True)
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)
        return 0

    def _flush_quietly(self) -> None:
        try:
            self._flush()
        except CrashonlyError as exc:
            # The backend is down: the jobs stay reserved under our worker id and recovery
            # returns them once we are gone (our lock or pid vanishes with us).
            self.log("error", error=f"could not release jobs: {exc}")
            self.pending = []
            self.pending_logs.clear()

    # --- helper threads ---------------------------------------------------------------------
    def _start_loop(self) -> None:
        import asyncio  # only apps with async tasks pay for it (≈30 ms)

        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run_loop() -> None:
            assert self.loop is not None
            asyncio.set_event_loop(self.loop)
            self.loop.call_soon(ready.set)
            self.loop.run_forever()

        threading.Thread(target=run_loop, name="asyncio", daemon=True).start()
        ready.wait()

    def _keeper(self) -> None:
        leases = [t.lease for t in self.app.tasks.values()] or [30.0]
        touch_every = max(0.2, min(leases) / 3)
        last_touch = time.monotonic()
        while not self.stop_threads.wait(_RECOVER_EVERY * random.uniform(0.8, 1.2)):
            try:
                report = self.app.recover()
                if report:
                    self.log("recovered", requeued=len(report.requeued) or None,
                             buried=len(report.buried) or None,
                             dead_workers=",".join(report.dead_workers) or None)
                    if report.requeued:
                        self.inbox.put(_WAKE)
                if time.monotonic() - last_touch >= touch_every:
                    last_touch = time.monotonic()
                    with self.held_lock:
                        held = {r.job.id: r for r in self.buffer}
                        held.update({i: run.reservation for i, run in self.running.items()})
                    lost = self.backend.touch([(i, r.token) for i, r in held.items()],
                                              now=self.app.clock())
                    self.backend.heartbeat(self.id, now=self.app.clock())
                    self._mark_lost(lost)
            except CrashonlyError as exc:
                self.log("error", error=f"keeper: {exc}")

    def _mark_lost(self, lost: list[int]) -> None:
        if not lost:
            return
        with self.held_lock:
            for job_id in lost:
                run = self.running.get(job_id)
                if run is not None:
                    run.lost = True
                    run.cancelled.set()
            self.buffer = collections.deque(r for r in self.buffer if r.job.id not in lost)

    def _waker(self) -> None:
        while not self.stop_threads.is_set():
            try:
                if self.backend.wait_for_change(1.0):
                    self.inbox.put(_WAKE)
            except CrashonlyError:
                self.stop_threads.wait(1.0)


def _release(r: Reservation) -> Settlement:
    return Settlement(job_id=r.job.id, token=r.token, kind=SettlementKind.RELEASE)


def _signame(received: list[int]) -> str:
    import signal

    return signal.Signals(received[0]).name if received else "none"


def _since_exec_ms() -> float | None:
    """Milliseconds since this process was exec'd (Linux; 10 ms resolution), else None."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        boot = time.clock_gettime(time.CLOCK_BOOTTIME)
        return round((boot - start_ticks / os.sysconf("SC_CLK_TCK")) * 1000, 1)
    except (OSError, ValueError, IndexError, AttributeError):
        return None
