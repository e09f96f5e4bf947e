"""The worker loop: reserve → run → settle, and a shutdown that hands every job back.

Threads, each with one job:

* **main** — reserves batches, settles finished jobs (folding their acks into the next claim),
  logs, and runs the shutdown. It blocks on one inbox that receives wake-ups from signals, lanes,
  the waker and the keeper.
* **lanes** — ``--concurrency`` threads that take sync jobs from the work queue and run them one
  after another. A claimed batch goes straight into the work queue, so a lane starts its next
  job without waiting for main: a job costs no thread round trip. Lanes report finished jobs in
  a list and wake main only when it must act (work queue empty, a job not acked, shutdown).
* **asyncio** — one event loop, only if the app has async tasks; main starts them on it.
* **keeper** — about twice a second runs recovery (dead workers' jobs back to ready), and about
  every lease/3 renews the leases of the jobs this worker holds and its heartbeat. It goes on
  during the shutdown grace, so a job is never timed out while it is being drained.
* **waker** — blocks in ``backend.wait_for_change`` (LISTEN/NOTIFY, or SQLite's data_version)
  and wakes main when new work may be there, so an idle worker does not poll the queue.

Shutdown (SIGTERM/SIGINT) is one function, :meth:`Worker._shutdown`: stop claiming, hand back
jobs not yet started, cancel running jobs and give them the grace, release what is left,
deregister, exit. A second signal ends the grace at once.
"""

from __future__ import annotations

import os
import queue
import random
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..backends import RecoveryReport, WorkerInfo
from ..errors import BackendUnavailable, CrashonlyError
from ..execution import Outcome, Prepared, prepare, run_async, run_sync
from ..job import Reservation, Settlement, SettlementKind
from ..lifecycle import Shutdown, die_with_parent, notify
from ..liveness import hostname
from .events import EventLog

if TYPE_CHECKING:
    import asyncio

    from ..app import App
    from ..context import JobContext

__all__ = ["Worker", "WorkerConfig"]

_WAKE = object()
_STOP = None
_RECOVER_EVERY = 0.5
_FLUSH_AFTER = 0.02  # settle finished jobs at least this often when nothing else commits
_MAX_PREFETCH = 64
_SKEW_WARN = 2.0  # seconds between this clock and the store's worth a warning


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
        self.id = f"{hostname()}:{os.getpid()}:{os.urandom(3).hex()}"
        self.log = log or EventLog(config.log_format, worker=self.id)
        self.log.worker = self.id
        self.queues = list(config.queues) or sorted({t.queue for t in app.tasks.values()}) or ["default"]
        self.shutdown = shutdown or Shutdown()
        self.inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()  # wake-ups, async completions
        self.work: queue.SimpleQueue[Reservation | None] = queue.SimpleQueue()  # sync jobs
        self.lock = threading.Lock()  # guards held, running, finished, lost
        self.held: dict[int, Reservation] = {}  # every reservation not yet settled
        self.running: dict[int, Running] = {}  # started and not finished
        self.finished: list[tuple[int, Outcome]] = []  # reported by lanes, not yet handled
        self.unstarted: list[Reservation] = []  # taken by a lane after shutdown began
        self.async_waiting: list[Reservation] = []  # async jobs claimed ahead, not started
        self.async_running = 0
        self.lost: set[int] = set()
        self.pending: list[Settlement] = []
        self.pending_logs: dict[int, tuple[str, dict[str, Any]]] = {}  # logged once committed
        self.pending_since = 0.0
        self.counts = Counts()
        self.stop_threads = threading.Event()
        self.lanes = [threading.Thread(target=self._lane, name=f"lane-{i}", daemon=True)
                      for i in range(config.concurrency)]
        self.loop: asyncio.AbstractEventLoop | None = None
        self.avg_duration = 0.05
        self.low_water = config.concurrency  # lanes wake main when this few jobs are left

    # --- life cycle -------------------------------------------------------------------------
    def run(self) -> int:
        """Start, work until a signal, shut down; returns the exit code."""
        if not self.shutdown.installed:
            self.shutdown.install()
        self.shutdown.on_signal(lambda: self.inbox.put(_WAKE))
        try:
            report = self._connect()
            if report is None:  # asked to stop before the backend could be reached
                self.log("shutdown", reason="stopped before the backend was reachable")
                self.log.flush()
                return 0
            if any(t.is_async for t in self.app.tasks.values()):
                self._start_loop()
            for lane in self.lanes:
                lane.start()
            for target, name in ((self._keeper, "keeper"), (self._waker, "waker")):
                threading.Thread(target=target, name=name, daemon=True).start()
            notify("READY=1")
            self.log("ready", queues=",".join(self.queues), concurrency=self.config.concurrency,
                     pid=os.getpid(), startup_ms=_since_exec_ms(),
                     recovered=len(report.requeued) or None)
            self.log.flush()
            # After READY, off the start-up path (ctypes costs ~4 ms): a SIGKILLed supervisor
            # (honcho, a shell) does not leave this worker running.
            die_with_parent()
            self._loop()
            return self._shutdown()
        finally:
            self.shutdown.restore()

    def _connect(self) -> RecoveryReport | None:
        """Migrate, recover and register. A remote backend that is down is waited for (with
        backoff, logged), so a worker started during a database outage does not crash-loop;
        a local one's errors are configuration errors and end the process at once."""
        backoff = 0.0
        while True:
            try:
                self.backend.migrate()
                report = self.app.recover()
                now = self.app.clock()
                self.backend.register_worker(WorkerInfo(
                    id=self.id, host=hostname(), pid=os.getpid(), started_at=now,
                    heartbeat_at=now, queues=self.queues, concurrency=self.config.concurrency,
                ))
                self._check_clock()
                return report
            except BackendUnavailable as exc:
                if not self.backend.capabilities.remote:
                    raise
                backoff = min(5.0, max(0.2, backoff * 2))
                self.log("error", error=str(exc), retry_in=f"{backoff:.1f}s")
                self.log.flush()
                if self.shutdown.requested.wait(backoff * random.uniform(0.8, 1.2)):
                    return None

    def _check_clock(self) -> None:
        """Leases and schedules follow the store's clock, so a wrong clock here steals or
        keeps nothing; but this worker's own timestamps (logs, enqueues' run_at) are off."""
        skew = self.backend.clock_skew(self.app.clock())
        if abs(skew) > _SKEW_WARN:
            self.log("warning", clock_skew=f"{skew:+.1f}s", reason=(
                f"this machine's clock is {abs(skew):.1f} s {'ahead of' if skew > 0 else 'behind'} "
                "the queue's: leases and schedules use the queue's clock, but fix NTP here"))

    def _loop(self) -> None:
        idle = False
        backoff = 0.0
        while not self.shutdown.requested.is_set():
            busy = bool(self.held)
            self._collect(timeout=0.5 if idle else _FLUSH_AFTER if busy else 0.0)
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
        """Claim more when the lanes are about to run dry; settle what finished. True when
        there was nothing to do."""
        outstanding = len(self.held)
        prefetch = self._prefetch()
        # Double buffering: claim the next batch while half of this one is still queued, so
        # lanes never wait for a commit.
        self.low_water = self.config.concurrency + prefetch // 2
        if outstanding < self.config.concurrency or (outstanding <= self.low_water and prefetch):
            limit = self.config.concurrency + prefetch - outstanding
            got, refused = self.backend.reserve(
                worker_id=self.id, queues=self.queues, limit=limit, now=self.app.clock(),
                settle=self.pending,
            )
            self._settled(refused)
            with self.lock:
                for r in got:
                    self.held[r.job.id] = r
            for r in got:
                self._dispatch(r)
            return not got and not self.held
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
    def _dispatch(self, r: Reservation) -> None:
        task = self.app.tasks.get(r.job.task)
        if task is None or not task.is_async or self.loop is None:
            self.work.put(r)  # a lane takes it
            return
        if self.async_running >= self.config.concurrency:
            self.async_waiting.append(r)  # started by _finished when a slot frees
            return
        self.async_running += 1
        run = self._begin(r)
        p = prepare(self.app, r, run.cancelled)
        if isinstance(p, Prepared):
            self.loop.call_soon_threadsafe(self._start_async, run, p)
        else:
            self.inbox.put((r.job.id, p))

    def _begin(self, r: Reservation) -> Running:
        run = Running(reservation=r, started=time.monotonic())
        with self.lock:
            self.running[r.job.id] = run
        self.log("started", job=r.job.id, task=r.job.task, attempt=r.job.attempts)
        return run

    def _lane(self) -> None:
        while True:
            r = self.work.get()
            if r is _STOP:
                return
            if self.shutdown.requested.is_set() or r.job.id in self.lost:
                with self.lock:
                    self.unstarted.append(r)
                self.inbox.put(_WAKE)
                continue
            run = self._begin(r)

            def on_start(ctx: JobContext, run: Running = run) -> None:
                run.context = ctx

            try:
                outcome = run_sync(self.app, r, run.cancelled, on_start)
            except BaseException as exc:  # never lose the completion
                outcome = Outcome(status="retrying", error=repr(exc), settlement=Settlement(
                    job_id=r.job.id, token=r.token, kind=SettlementKind.FAIL, error=repr(exc)))
            with self.lock:
                self.finished.append((r.job.id, outcome))
            settled = outcome.settlement
            if (self.work.qsize() <= self.low_water - self.config.concurrency
                    or self.shutdown.requested.is_set()
                    or (settled is not None and settled.kind is not SettlementKind.ACK)):
                self.inbox.put(_WAKE)

    def _start_waiting_async(self) -> None:
        while self.async_waiting and self.async_running < self.config.concurrency:
            if self.shutdown.requested.is_set():
                return
            self._dispatch(self.async_waiting.pop(0))

    def _start_async(self, run: Running, p: Prepared) -> None:
        assert self.loop is not None
        job_id = run.reservation.job.id
        run.task = self.loop.create_task(run_async(self.app, p))
        run.task.add_done_callback(lambda t: self.inbox.put((job_id, t.result())))

    def _collect(self, timeout: float) -> None:
        """Wait up to ``timeout`` for a wake-up, then handle everything that finished."""
        try:
            item = self.inbox.get(timeout=timeout) if timeout > 0 else self.inbox.get_nowait()
        except queue.Empty:
            item = _WAKE
        while True:
            if item is not _WAKE:
                self._finished(*item)
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                break
        with self.lock:
            finished, self.finished = self.finished, []
        for job_id, outcome in finished:
            self._finished(job_id, outcome)

    def _finished(self, job_id: int, outcome: Outcome) -> None:
        with self.lock:
            run = self.running.pop(job_id, None)
            self.held.pop(job_id, None)
        if run is None:
            return
        r = run.reservation
        if self.loop is not None and self._is_async(r):
            self.async_running -= 1
            self._start_waiting_async()
        self.avg_duration = 0.8 * self.avg_duration + 0.2 * outcome.duration
        lost = run.lost or job_id in self.lost
        status = "lost" if lost else outcome.status
        fields: dict[str, Any] = {"job": job_id, "task": r.job.task,
                                  "ms": round(outcome.duration * 1000, 1)}
        if outcome.error and status != "succeeded":
            fields["error"] = outcome.error
        if lost:
            fields["reason"] = "lease lost while running: another worker owns it now"
        if outcome.settlement is None or lost:
            self.counts.add(status)  # committed already (transactional), or not ours to settle
            self.log(status, **fields)
            return
        if not self.pending:
            self.pending_since = time.monotonic()
        self.pending.append(outcome.settlement)
        self.pending_logs[job_id] = (status, fields)
        if outcome.settlement.kind is SettlementKind.RELEASE:
            self._flush()  # give it back at once

    def _is_async(self, r: Reservation) -> bool:
        task = self.app.tasks.get(r.job.task)
        return task is not None and task.is_async

    def _hand_back_unstarted(self, reason: str) -> None:
        """Release every claimed job not started (queued for a lane or the event loop, or
        taken by a lane after the stop)."""
        self.unstarted.extend(self.async_waiting)
        self.async_waiting = []
        while True:
            try:
                r = self.work.get_nowait()
            except queue.Empty:
                break
            if r is not _STOP:
                self.unstarted.append(r)
        with self.lock:
            unstarted, self.unstarted = self.unstarted, []
            for r in unstarted:
                self.held.pop(r.job.id, None)
        for r in unstarted:
            if r.job.id in self.lost:
                continue
            self.pending.append(_release(r))
            self.pending_logs[r.job.id] = ("released", {"job": r.job.id, "task": r.job.task,
                                                        "reason": reason})

    # --- shutdown ---------------------------------------------------------------------------
    def _shutdown(self) -> int:
        """Stop claiming → hand back jobs not started → cancel and wait up to the grace →
        release what is left → deregister."""
        t0 = time.monotonic()
        self.log("stopping", signal=_signame(self.shutdown.received), running=len(self.running),
                 grace=self.config.grace)
        self.log.flush()
        notify("STOPPING=1")
        self._hand_back_unstarted("claimed but not started")
        self._flush_quietly()
        with self.lock:
            running = list(self.running.values())
        for run in running:
            run.cancelled.set()
            if run.task is not None and self.loop is not None:
                self.loop.call_soon_threadsafe(run.task.cancel)
        deadline = t0 + self.config.grace
        while self.held and not self.shutdown.immediate.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._collect(timeout=min(0.05, remaining))
            self._hand_back_unstarted("claimed but not started")
            self._flush_quietly()
        self._collect(timeout=0.0)
        self._hand_back_unstarted("claimed but not started")
        with self.lock:
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
                 released=c.released, lost=c.lost, ms=round((time.monotonic() - t0) * 1000, 1))
        self.log.flush()
        if stuck:
            # Threads cannot be killed: their jobs are released (committed above), so leave
            # without joining them.
            os._exit(0)
        for _ in self.lanes:
            self.work.put(_STOP)
        for lane in self.lanes:
            lane.join(1.0)
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
                    with self.lock:
                        held = [(i, r.token) for i, r in self.held.items()]
                    lost = self.backend.touch(held, now=self.app.clock())
                    self.backend.heartbeat(self.id, now=self.app.clock())
                    self._mark_lost(lost)
            except CrashonlyError as exc:
                self.log("error", error=f"keeper: {exc}")

    def _mark_lost(self, lost: list[int]) -> None:
        if not lost:
            return
        with self.lock:
            self.lost.update(lost)
            for job_id in lost:
                run = self.running.get(job_id)
                if run is not None:
                    run.lost = True
                    run.cancelled.set()

    def _waker(self) -> None:
        while not self.stop_threads.is_set():
            if self.held:  # busy: main claims again when the lanes run low, no need to poll
                self.stop_threads.wait(0.05)
                continue
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
