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
  during the shutdown grace, so a job is never timed out while it is being drained. A lease
  the store refuses (the job was handed out again: this worker stalled past it) is dropped
  from the holdings at once and never renewed; its run, if any, is cancelled and its outcome
  logged ``lost``, not applied. Lost leases are tracked by (job, token), so a fresh claim of
  the same job is a new run.
* **suspects** — a job whose last holder died while holding others (``Reservation.alone``)
  runs alone: started once nothing else is held, running or waiting to be settled, and
  nothing is claimed until it is settled. A death then is provably its own (docs/design.md,
  "Blame").
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
from ..codec import storable
from ..errors import BackendUnavailable, CrashonlyError
from ..execution import Outcome, Prepared, prepare, run_async, run_sync, unknown_task_grace
from ..job import Reservation, Settlement, SettlementKind
from ..lifecycle import Shutdown, die_with_parent, notify
from ..liveness import hostname
from .events import EventLog
from .heartbeat import Helper

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

Key = tuple[int, int]  # (job id, token): one run of a job


@dataclass(frozen=True, kw_only=True, slots=True)
class WorkerConfig:
    queues: tuple[str, ...] = ()
    concurrency: int = 1
    grace: float = 10.0
    prefetch: int | None = None  # None: adapt to job duration
    log_format: str = "text"
    heartbeat_helper: bool = True  # renew leases from a helper process while the GIL is held


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
        unknown_task_grace()  # a bad $CRASHONLY_UNKNOWN_TASK_GRACE fails the start, not a job
        self.queues = list(config.queues) or sorted({t.queue for t in app.tasks.values()}) or ["default"]
        self.shutdown = shutdown or Shutdown()
        self.inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()  # wake-ups, async completions
        self.work: queue.SimpleQueue[Reservation | None] = queue.SimpleQueue()  # sync jobs
        self.lock = threading.Lock()  # guards held, running, finished, lost, suspect
        self.held: dict[int, Reservation] = {}  # live reservations not yet settled, by job id
        self.running: dict[Key, Running] = {}  # started and not finished (lost ones too)
        self.finished: list[tuple[Key, Outcome]] = []  # reported by lanes, not yet handled
        self.unstarted: list[Reservation] = []  # taken by a lane after shutdown began
        self.async_waiting: list[Reservation] = []  # async jobs claimed ahead, not started
        self.async_running = 0
        self.lost: set[Key] = set()  # stale runs not finished yet (queued or running)
        self.suspect: Reservation | None = None  # waits to run alone
        self.solo: Key | None = None  # the suspect running alone
        self.pending: list[Settlement] = []
        self.pending_logs: dict[Key, tuple[str, dict[str, Any]]] = {}  # logged once committed
        self.pending_since = 0.0
        self.flush_soon = False
        self.counts = Counts()
        self.stop_threads = threading.Event()
        self.lanes = [threading.Thread(target=self._lane, name=f"lane-{i}", daemon=True)
                      for i in range(config.concurrency)]
        self.loop: asyncio.AbstractEventLoop | None = None
        self.avg_duration = 0.05
        self.low_water = config.concurrency  # lanes wake main when this few jobs are left
        leases = [t.lease for t in app.tasks.values()] or [30.0]
        self.touch_every = max(0.2, min(leases) / 3)
        self.late_after = max(1.0, min(2.0, self.touch_every))  # the helper steps in
        self.helper: Helper | None = None

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
            self._start_helper()
            self._loop()
            return self._shutdown()
        finally:
            self.shutdown.restore()
            if self.helper is not None:
                self.helper.close()

    def _start_helper(self) -> None:
        if not self.config.heartbeat_helper or not self.backend.capabilities.multi_process:
            return
        try:
            self.helper = Helper(self.app.url, self.id, self.late_after)
        except OSError as exc:
            self.log("error", error=f"no heartbeat helper ({exc}): a job holding the GIL "
                     "longer than its lease may run twice")

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
            try:
                self._collect(timeout=0.5 if idle else _FLUSH_AFTER if busy else 0.0)
                if self.shutdown.requested.is_set():
                    break
                idle = self._step()
                backoff = 0.0
            except Exception as exc:  # nothing from a job's data ends the loop
                if self.pending and not isinstance(exc, BackendUnavailable):
                    exc = self._settle_one_by_one() or exc
                backoff = min(5.0, max(0.1, backoff * 2))
                error = str(exc) if isinstance(exc, CrashonlyError) else repr(exc)
                self.log("error", error=storable(error), retry_in=f"{backoff:.1f}s")
                self.log.flush()
                self.shutdown.requested.wait(backoff * random.uniform(0.8, 1.2))
                idle = True
            self.log.flush()

    def _settle_one_by_one(self) -> Exception | None:
        """A batch of settlements failed for something other than an outage: apply them one
        at a time, so one the store cannot take (its content) holds back no other; that one
        is buried with the reason. Returns the error to back off on, if any."""
        pending, self.pending = self.pending, []
        refused: list[int] = []
        for i, s in enumerate(pending):
            try:
                try:
                    refused += self.backend.settle([s], now=self.app.clock())
                except BackendUnavailable:
                    raise
                except Exception as exc:
                    reason = storable(f"its settlement could not be stored: {exc!r}")
                    bury = Settlement(job_id=s.job_id, token=s.token, kind=SettlementKind.BURY,
                                      error=reason)
                    refused += self.backend.settle([bury], now=self.app.clock())
                    self.pending_logs[(s.job_id, s.token)] = (
                        "buried", {"job": s.job_id, "error": reason})
            except Exception as exc:  # an outage: the rest waits for the store
                self.pending = pending[:i]
                self._settled(refused)
                self.pending = pending[i:]
                return exc
        self.pending = pending
        self._settled(refused)
        return None

    def _step(self) -> bool:
        """Claim more when the lanes are about to run dry; settle what finished. True when
        there was nothing to do."""
        if self.suspect is not None or self.solo is not None:
            self._start_suspect()
            if self.pending and (self.flush_soon
                                 or time.monotonic() - self.pending_since >= _FLUSH_AFTER):
                self._flush()
            return False
        with self.lock:
            outstanding = len(self.held) + sum(1 for k in self.running if k in self.lost)
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
            # The store handed out again a job we hold: our old token is stale (we stalled).
            self._mark_lost([(r.job.id, self.held[r.job.id].token) for r in got
                             if r.job.id in self.held])
            with self.lock:
                for r in got:
                    self.held[r.job.id] = r
            for r in got:
                self._dispatch(r)
            return not got and not self.held
        if self.pending and (self.flush_soon or len(self.pending) >= _MAX_PREFETCH
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
        self.flush_soon = False
        refused_ids = set(refused)
        for s in self.pending:
            status, fields = self.pending_logs.pop((s.job_id, s.token),
                                                   ("released", {"job": s.job_id}))
            if s.job_id in refused_ids:
                status = "lost"
                fields = {**fields, "reason": "lease lost before the ack: not applied"}
                fields.pop("error", None)
            self.counts.add(status)
            self.log(status, **fields)
        self.pending = []

    # --- running jobs -----------------------------------------------------------------------
    def _dispatch(self, r: Reservation) -> None:
        if r.alone and self.solo is None:
            self.suspect = r
            self._start_suspect()
            return
        with self.lock:
            if (r.job.id, r.token) in self.lost:  # went stale while it waited
                self.lost.discard((r.job.id, r.token))
                return
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
            self.inbox.put(((r.job.id, r.token), p))

    def _start_suspect(self) -> None:
        """Start the suspect once it is the only job held, nothing runs (stale runs included)
        and every other settlement is committed: if the process dies now, the death is its."""
        r = self.suspect
        if r is None or self.shutdown.requested.is_set():
            return
        with self.lock:
            if (self.running or self.async_waiting or self.finished
                    or self.held.get(r.job.id) is not r or len(self.held) > 1):
                return
        self._flush()  # may fail (an outage): then the next step tries again
        with self.lock:
            if self.suspect is not r:  # went stale meanwhile
                return
            self.suspect = None
            self.solo = (r.job.id, r.token)
        self._dispatch(r)

    def _begin(self, r: Reservation) -> Running:
        run = Running(reservation=r, started=time.monotonic())
        with self.lock:
            self.running[(r.job.id, r.token)] = run
        self.log("started", job=r.job.id, task=r.job.task, attempt=r.job.attempts)
        return run

    def _lane(self) -> None:
        while True:
            r = self.work.get()
            if r is _STOP:
                return
            key = (r.job.id, r.token)
            with self.lock:
                stale = key in self.lost
                self.lost.discard(key)
                if not stale and self.shutdown.requested.is_set():
                    self.unstarted.append(r)
                    stale = True
            if stale:
                self.inbox.put(_WAKE)
                continue
            run = self._begin(r)

            def on_start(ctx: JobContext, run: Running = run) -> None:
                run.context = ctx

            try:
                outcome = run_sync(self.app, r, run.cancelled, on_start)
            except BaseException as exc:  # never lose the completion
                error = storable(repr(exc))
                outcome = Outcome(status="retrying", error=error, settlement=Settlement(
                    job_id=r.job.id, token=r.token, kind=SettlementKind.FAIL, error=error))
            with self.lock:
                self.finished.append((key, outcome))
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
        key = (run.reservation.job.id, run.reservation.token)
        run.task = self.loop.create_task(run_async(self.app, p))
        run.task.add_done_callback(lambda t: self.inbox.put((key, t.result())))

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
        for key, outcome in finished:
            self._finished(key, outcome)

    def _finished(self, key: Key, outcome: Outcome) -> None:
        job_id = key[0]
        with self.lock:
            run = self.running.pop(key, None)
            if run is None:
                return
            r = run.reservation
            if self.held.get(job_id) is r:
                del self.held[job_id]
            lost = run.lost or key in self.lost
            self.lost.discard(key)
            if self.solo == key:
                self.solo = None
        if self.loop is not None and self._is_async(r):
            self.async_running -= 1
            self._start_waiting_async()
        self.avg_duration = 0.8 * self.avg_duration + 0.2 * outcome.duration
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
        self.pending_logs[key] = (status, fields)
        if outcome.settlement.kind is SettlementKind.RELEASE:
            self.flush_soon = True  # give it back at once (main's next step)

    def _is_async(self, r: Reservation) -> bool:
        task = self.app.tasks.get(r.job.task)
        return task is not None and task.is_async

    def _hand_back_unstarted(self, reason: str) -> None:
        """Release every claimed job not started (queued for a lane or the event loop, or
        taken by a lane after the stop)."""
        self.unstarted.extend(self.async_waiting)
        self.async_waiting = []
        if self.suspect is not None:
            self.unstarted.append(self.suspect)
            self.suspect = None
        while True:
            try:
                r = self.work.get_nowait()
            except queue.Empty:
                break
            if r is not _STOP:
                self.unstarted.append(r)
        with self.lock:
            unstarted, self.unstarted = self.unstarted, []
            live = [r for r in unstarted if (r.job.id, r.token) not in self.lost]
            self.lost.difference_update((r.job.id, r.token) for r in unstarted)
            for r in live:
                if self.held.get(r.job.id) is r:
                    del self.held[r.job.id]
        for r in live:
            self.pending.append(_release(r))
            self.pending_logs[(r.job.id, r.token)] = (
                "released", {"job": r.job.id, "task": r.job.task, "reason": reason})

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
            stale = {k for k in self.running if k in self.lost}
        for run in stuck:
            key = (run.reservation.job.id, run.reservation.token)
            if run.context is not None and run.context.db is not None:
                self.backend.abort(run.context.db)
            if run.lost or key in stale:
                continue  # not ours to release
            self.pending.append(_release(run.reservation))
            self.pending_logs[key] = ("released", {
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
            try:
                self._flush()
            except BackendUnavailable:
                raise
            except Exception as exc:  # a settlement the store cannot take: isolate it
                error = self._settle_one_by_one()
                if error is not None:
                    raise error from exc
        except Exception as exc:
            # The backend is down: the jobs stay reserved under our worker id and recovery
            # returns them once we are gone (our lock or pid vanishes with us).
            self.log("error", error=storable(f"could not release jobs: {exc}"))
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
        touch_every = self.touch_every
        last_touch = last_turn = time.monotonic()
        in_store = 0.0  # seconds the last pass spent in the store's calls
        while not self.stop_threads.wait(_RECOVER_EVERY * random.uniform(0.8, 1.2)):
            if self.helper is not None:
                self.helper.tick()
            late = time.monotonic() - last_turn - _RECOVER_EVERY * 1.2
            last_turn = time.monotonic()
            if late > self.late_after:
                # A job held the GIL (one long C call) or the process was paused: this
                # keeper could not renew. The helper renewed meanwhile, unless paused.
                # Or the last pass waited for the store (SQLite's write lock held by a
                # long transaction, a slow server): say which, an operator acts on it.
                # (A GIL taken while the keeper was inside a store call reads as a wait;
                # rare: the keeper spends milliseconds per pass there.)
                reason = ("the keeper waited for the store: another transaction held its "
                          "write lock, or the store was slow" if in_store >= late / 2 else
                          "the keeper could not run: a job held the GIL, or the process "
                          "was paused")
                self.log("late", seconds=round(late, 1), held=len(self.held),
                         helper="on" if self.helper is not None else "off", reason=reason)
            pass_began = time.monotonic()
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
                    stale = set(self.backend.touch(held, now=self.app.clock()))
                    self.backend.heartbeat(self.id, now=self.app.clock())
                    self._mark_lost([k for k in held if k[0] in stale])
            except CrashonlyError as exc:
                self.log("error", error=f"keeper: {exc}")
            in_store = time.monotonic() - pass_began

    def _mark_lost(self, lost: list[Key]) -> None:
        """These reservations are stale: drop them from the holdings (never renewed again),
        cancel their runs, and remember them until their run (or their turn) is over."""
        if not lost:
            return
        with self.lock:
            for key in lost:
                r = self.held.get(key[0])
                if r is None or r.token != key[1]:
                    continue
                del self.held[key[0]]
                if self.suspect is r:
                    self.suspect = None  # never queued: nothing will come back for it
                    continue
                self.lost.add(key)
                run = self.running.get(key)
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
