"""Running one reserved job: resolve its task, decode its call, run it, and decide its fate.

Shared by the in-process runner (:meth:`crashonly.App.run_worker_once`) and the worker process,
so "what happens to a job" is written once. The result is an :class:`Outcome`: the settlement to
apply (ack, release, fail, bury), or none when a transactional task already committed its ack.

What does not count as an attempt (the job is released, after a delay, with its attempt given
back): a task name this worker does not know, within ``$CRASHONLY_UNKNOWN_TASK_GRACE`` seconds
of the job's creation (default 600: during a rolling deploy an old worker sees new tasks), and
:class:`BackendUnavailable` raised by the job or its transaction's commit (an outage, a full
disk: the store's fault, not the job's). Every error text is made storable (:func:`storable`).
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import codec
from .codec import storable
from .context import JobContext, _enter, _exit
from .errors import BackendUnavailable, Cancelled, ConfigError, Retry, SerializationError, StaleLease
from .job import Reservation, Settlement, SettlementKind

if TYPE_CHECKING:
    from .app import App, Task

__all__ = ["Outcome", "Prepared", "backoff_delay", "conclude", "prepare", "run_sync",
           "unknown_task_grace"]

MAX_BACKOFF = 3600.0
UNKNOWN_TASK_GRACE_ENV = "CRASHONLY_UNKNOWN_TASK_GRACE"
UNKNOWN_TASK_RETRY = 10.0  # an unknown task's job is offered again after about this long
OUTAGE_RETRY = 2.0  # a job that met an outage is offered again after about this long


@dataclass(frozen=True, kw_only=True, slots=True)
class Outcome:
    """How a job ended this time. ``status``: succeeded, failed, retrying, buried, released, lost."""

    status: str
    settlement: Settlement | None
    error: str | None = None
    duration: float = 0.0


@dataclass(kw_only=True, slots=True)
class Prepared:
    reservation: Reservation
    task: Task[Any, Any]
    args: list[Any]
    kwargs: dict[str, Any]
    context: JobContext


def backoff_delay(task: Task[Any, Any], attempt: int) -> float:
    """Exponential backoff with jitter: ``base * 2**(attempt-1)``, capped at an hour,
    times a random factor in [0.5, 1.5) so retries of many jobs do not arrive together."""
    if callable(task.retry_backoff):
        return max(0.0, float(task.retry_backoff(attempt)))
    base = float(task.retry_backoff)
    delay: float = min(MAX_BACKOFF, base * 2 ** max(0, attempt - 1)) * random.uniform(0.5, 1.5)
    return delay


def unknown_task_grace() -> float:
    """Seconds after its creation that a job of an unknown task is still waited for."""
    raw = os.environ.get(UNKNOWN_TASK_GRACE_ENV, "600")
    try:
        grace = float(raw)
    except ValueError:
        grace = -1.0
    if not grace >= 0:  # also NaN
        raise ConfigError(f"{UNKNOWN_TASK_GRACE_ENV}={raw!r}: expected a number of seconds >= 0")
    return grace


def _settle(r: Reservation, kind: SettlementKind, **kw: Any) -> Settlement:
    return Settlement(job_id=r.job.id, token=r.token, kind=kind, **kw)


def _released(r: Reservation, delay: float, reason: str) -> Outcome:
    """Given back after about ``delay`` seconds, its attempt not counted."""
    return Outcome(status="released", error=reason, settlement=_settle(
        r, SettlementKind.RELEASE, delay=delay * random.uniform(0.5, 1.5)))


def prepare(app: App, r: Reservation, cancelled: threading.Event | None = None) -> Prepared | Outcome:
    """Find the task and decode the call; a job that cannot be run is buried with the reason
    (a task not known yet is released with a delay first: see the module's docstring)."""
    task = app.tasks.get(r.job.task)
    if task is None:
        reason = storable(
            f"unknown task {r.job.task!r}: no task of that name is registered in this app "
            f"(known: {', '.join(sorted(app.tasks)) or 'none'})"
        )
        grace = unknown_task_grace()
        waited = app.clock() - r.job.created_at
        if waited < grace:
            return _released(r, min(UNKNOWN_TASK_RETRY, grace - waited),
                             f"{reason}; offered again later, buried {grace:g} s after it was "
                             f"enqueued (${UNKNOWN_TASK_GRACE_ENV})")
        return Outcome(status="buried", error=reason,
                       settlement=_settle(r, SettlementKind.BURY, error=reason))
    try:
        call = json.loads(r.payload)
        args, kwargs = call["args"], call["kwargs"]
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise TypeError("args must be a list and kwargs an object")
    except (ValueError, TypeError, KeyError, RecursionError) as exc:
        reason = storable(f"undecodable payload: {exc}")
        return Outcome(status="buried", error=reason,
                       settlement=_settle(r, SettlementKind.BURY, error=reason))
    context = JobContext(
        id=r.job.id, task=task.name, queue=r.job.queue, attempt=r.job.attempts,
        max_attempts=r.job.max_attempts, idempotency_key=r.job.idempotency_key,
        cancelled=cancelled or threading.Event(),
    )
    return Prepared(reservation=r, task=task, args=args, kwargs=kwargs, context=context)


def conclude(p: Prepared, started: float, exc: BaseException | None, result: Any = None,
             *, acked: bool = False) -> Outcome:
    """Turn what the handler did into an outcome; always removes the scratch directory."""
    p.context.remove_scratch()
    r, task = p.reservation, p.task
    duration = time.monotonic() - started
    if exc is None and task.timeout is not None and duration > task.timeout and not acked:
        exc = TimeoutError(f"took {duration:.3f} s, over its timeout of {task.timeout:g} s")
    if exc is None:
        if acked:
            return Outcome(status="succeeded", settlement=None, duration=duration)
        try:
            encoded = codec.encode_result(result)
        except SerializationError as err:
            exc = err
        except Exception as err:  # a result's __iter__ or __eq__ may raise anything
            exc = SerializationError(f"the job's return value could not be encoded: {err!r}")
        else:
            return Outcome(status="succeeded", duration=duration,
                           settlement=_settle(r, SettlementKind.ACK, result=encoded))
    if isinstance(exc, StaleLease):
        return Outcome(status="lost", settlement=None, error=str(exc), duration=duration)
    if isinstance(exc, BackendUnavailable):
        return _released(r, OUTAGE_RETRY,
                         storable(f"the store was unavailable (no attempt counted): {exc}"))
    if isinstance(exc, Cancelled) or type(exc).__name__ == "CancelledError":
        return Outcome(status="released", duration=duration,
                       settlement=_settle(r, SettlementKind.RELEASE))
    if isinstance(exc, Retry):
        delay = exc.delay if exc.delay is not None else backoff_delay(task, r.job.attempts)
        error = storable(f"Retry: {exc.reason}")
    else:
        delay = backoff_delay(task, r.job.attempts)
        error = _traceback(exc)
    status = "buried" if r.job.attempts >= r.job.max_attempts else "retrying"
    return Outcome(status=status, error=error, duration=duration,
                   settlement=_settle(r, SettlementKind.FAIL, error=error, delay=delay))


def _traceback(exc: BaseException) -> str:
    import traceback  # only failing jobs pay for it

    try:
        text = "".join(traceback.format_exception(exc)).rstrip()
    except Exception:  # an exception whose __str__ raises
        text = f"{type(exc).__name__} (its message could not be formatted)"
    return storable(text)


def run_sync(
    app: App, r: Reservation, cancelled: threading.Event | None = None,
    on_start: Callable[[JobContext], None] | None = None,
) -> Outcome:
    """Run a sync task in this thread (a transactional one inside its ack's transaction).
    ``on_start`` sees the job's context first (the worker keeps it to abort the job's
    transaction if the job outlives the shutdown grace)."""
    p = prepare(app, r, cancelled)
    if isinstance(p, Outcome):
        return p
    if on_start is not None:
        on_start(p.context)
    handler: Callable[..., Any] = p.task.fn
    token = _enter(p.context)
    started = time.monotonic()
    try:
        if p.task.transactional:
            def body(conn: Any) -> str | None:
                p.context.db = conn
                return codec.encode_result(handler(*p.args, **p.kwargs))

            app.backend.run_transactional(r, body, clock=app.clock)
            return conclude(p, started, None, acked=True)
        return conclude(p, started, None, handler(*p.args, **p.kwargs))
    except BaseException as exc:  # Cancelled is a BaseException by design
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        return conclude(p, started, exc)
    finally:
        p.context.db = None
        _exit(token)


async def run_async(app: App, p: Prepared) -> Outcome:
    """Run an async task on the current event loop; ``asyncio.CancelledError`` releases it."""
    handler: Callable[..., Awaitable[Any]] = p.task.fn
    token = _enter(p.context)
    started = time.monotonic()
    try:
        coro = handler(*p.args, **p.kwargs)
        if p.task.timeout is not None:
            import asyncio

            try:
                result = await asyncio.wait_for(coro, p.task.timeout)
            except TimeoutError:
                raise TimeoutError(
                    f"cancelled after its timeout of {p.task.timeout:g} s"
                ) from None
        else:
            result = await coro
        return conclude(p, started, None, result)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        return conclude(p, started, exc)
    finally:
        _exit(token)
