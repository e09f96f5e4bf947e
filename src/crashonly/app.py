"""The user API: :class:`App`, tasks, enqueue options and job handles."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Generic, ParamSpec, TypeVar, overload

from . import codec, validation
from .backends import Backend, Capabilities, RecoveryReport, WorkerInfo, open_backend
from .errors import ConfigError, InvalidJob, JobFailed, JobNotFound, JobTimeout
from .job import Existing, Job, JobState, NewJob
from .liveness import hostname

__all__ = ["DEFAULT_URL", "App", "JobHandle", "Task", "TaskOptions"]

DEFAULT_URL = "sqlite:///crashonly.db"
POISON_ENV = "CRASHONLY_POISON_AFTER"
P = ParamSpec("P")
R = TypeVar("R")
_OPTIONS = frozenset({"delay", "run_at", "priority", "queue", "unique_key", "unique_after_done",
                      "unique_while_buried", "connection"})


class JobHandle:
    """What ``enqueue`` returns: the job's id, and a way to wait for its result.

    ``duplicate`` is True when the enqueue stored nothing because another job of the task held
    its unique key: ``id`` is that job's, and ``existing_state`` the state it was in (ready,
    reserved... or done/buried when it keeps its key after finishing: its result or error is
    the one ``wait`` gives)."""

    __slots__ = ("app", "duplicate", "existing_state", "id")

    def __init__(self, app: App, job_id: int, existing_state: JobState | None = None) -> None:
        self.app = app
        self.id = int(job_id)
        self.duplicate = existing_state is not None
        self.existing_state = existing_state

    def __repr__(self) -> str:
        if self.existing_state is not None:
            return f"<JobHandle {self.id} duplicate of a {self.existing_state.value} job>"
        return f"<JobHandle {self.id}>"

    @property
    def job(self) -> Job:
        return self.app.get_job(self.id)

    @property
    def state(self) -> JobState:
        return self.job.state

    def wait(self, timeout: float | None = None, *, poll: float = 0.05) -> Any:
        """Block until the job is done and return its result; raise :class:`JobFailed` if it
        was buried, :class:`JobTimeout` after ``timeout`` seconds (the job goes on)."""
        self.app._require("results", f"waiting for job {self.id}'s result")
        deadline = None if timeout is None else time.monotonic() + timeout
        interval = 0.002
        while True:
            job = self.app.get_job(self.id)
            if job.state is JobState.DONE:
                return job.result
            if job.state is JobState.BURIED:
                raise JobFailed(job.id, job.last_error)
            if deadline is not None and time.monotonic() >= deadline:
                raise JobTimeout(f"job {self.id} is still {job.state.value} after {timeout} s")
            sleep = interval if deadline is None else min(interval, deadline - time.monotonic())
            time.sleep(max(0.0, sleep))
            interval = min(poll, interval * 2)


@dataclass(frozen=True, kw_only=True, slots=True)
class EnqueueOptions:
    delay: float | None = None
    run_at: float | None = None
    priority: int | None = None
    queue: str | None = None
    unique_key: str | None = None
    unique_after_done: float | None = None
    unique_while_buried: bool | None = None
    connection: Any = None


class TaskOptions(Generic[P, R]):
    """``task.options(delay=..., priority=...)``: enqueue options kept apart from arguments."""

    __slots__ = ("_opts", "_task")

    def __init__(self, task: Task[P, R], opts: EnqueueOptions) -> None:
        self._task = task
        self._opts = opts

    def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> JobHandle:
        return self._task.app._enqueue_calls(self._task.name, [(args, kwargs)], self._opts)[0]

    def enqueue_many(self, calls: Iterable[Sequence[Any] | Mapping[str, Any]]) -> list[JobHandle]:
        return self._task.app._enqueue_calls(self._task.name, _calls(calls), self._opts)


class Task(Generic[P, R]):
    """A function registered with ``@app.task``; calling it runs it here, now."""

    def __init__(
        self, app: App, fn: Callable[P, R], *, name: str, queue: str, priority: int,
        max_attempts: int, lease: float, retry_backoff: float | Callable[[int], float],
        transactional: bool, timeout: float | None, unique_after_done: float = 0.0,
        unique_while_buried: bool = False,
    ) -> None:
        self.app = app
        self.fn = fn
        self.name = name
        self.queue = queue
        self.priority = priority
        self.max_attempts = max_attempts
        self.lease = lease
        self.retry_backoff = retry_backoff
        self.transactional = transactional
        self.timeout = timeout
        self.unique_after_done = unique_after_done
        self.unique_while_buried = unique_while_buried
        self.is_async = _is_async(fn)
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def __repr__(self) -> str:
        return f"<Task {self.name} queue={self.queue}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> JobHandle:
        return self.app._enqueue_calls(self.name, [(args, kwargs)], EnqueueOptions())[0]

    def enqueue_many(self, calls: Iterable[Sequence[Any] | Mapping[str, Any]]) -> list[JobHandle]:
        """Enqueue many calls in one transaction: each item is an args sequence or a kwargs
        mapping. Far faster than a loop of ``enqueue``."""
        return self.app._enqueue_calls(self.name, _calls(calls), EnqueueOptions())

    def options(
        self, *, delay: float | None = None, run_at: float | None = None,
        priority: int | None = None, queue: str | None = None, unique_key: str | None = None,
        unique_after_done: float | None = None, unique_while_buried: bool | None = None,
        connection: Any = None,
    ) -> TaskOptions[P, R]:
        opts = EnqueueOptions(delay=delay, run_at=run_at, priority=priority, queue=queue,
                              unique_key=unique_key, unique_after_done=unique_after_done,
                              unique_while_buried=unique_while_buried, connection=connection)
        return TaskOptions(self, opts)


def _calls(
    calls: Iterable[Sequence[Any] | Mapping[str, Any]],
) -> list[tuple[Sequence[Any], Mapping[str, Any]]]:
    out: list[tuple[Sequence[Any], Mapping[str, Any]]] = []
    for call in calls:
        if isinstance(call, Mapping):
            out.append(((), call))
        elif isinstance(call, str | bytes):
            raise TypeError("enqueue_many takes a list of argument tuples or kwargs dicts")
        else:
            out.append((call, {}))
    return out


class App:
    """A crashonly application: its tasks and the backend its jobs live in.

    ``url`` names the backend; without it ``$DATABASE_URL``, else ``sqlite:///crashonly.db``
    in the working directory. ``poison_after``: bury a job whose worker died this many times in
    a row while running it (default ``$CRASHONLY_POISON_AFTER``, else 3). Nothing connects until
    the first operation.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        retention: float = 86400.0,
        poison_after: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = url or os.environ.get("DATABASE_URL") or DEFAULT_URL
        self.retention = retention
        if poison_after is None:
            raw = os.environ.get(POISON_ENV, "3")
            try:
                poison_after = int(raw)
            except ValueError:
                raise ConfigError(f"{POISON_ENV}={raw!r}: expected a whole number") from None
        if poison_after < 1:
            raise ConfigError(f"poison_after must be at least 1, not {poison_after}")
        self.poison_after = poison_after
        self.clock = clock
        self.tasks: dict[str, Task[Any, Any]] = {}
        self._backend: Backend | None = None
        self._vetted: Backend | None = None  # the backend the tasks were checked against
        self._local_worker: str | None = None

    def __repr__(self) -> str:
        return f"<crashonly.App {self.url.split('@')[-1]} tasks={len(self.tasks)}>"

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            self._backend = open_backend(self.url)
        if self._vetted is not self._backend:  # also when set from outside (the CLI does)
            for t in self.tasks.values():
                _vet_task(t, self._backend)
            self._vetted = self._backend
        return self._backend

    def _require(self, capability: str, what: str) -> Backend:
        """The backend, if it declares ``capability``; else a ConfigError naming ``what``."""
        backend = self.backend
        if not getattr(backend.capabilities, capability):
            raise ConfigError(_lacks(backend, capability, what))
        return backend

    def close(self) -> None:
        if self._backend is not None:
            if self._local_worker is not None:
                self._backend.deregister_worker(self._local_worker)
                self._local_worker = None
            self._backend.close()
            self._backend = None

    # --- tasks ----------------------------------------------------------------------------
    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...

    @overload
    def task(
        self, /, *, name: str | None = ..., queue: str = ..., priority: int = ...,
        max_attempts: int = ..., lease: float = ...,
        retry_backoff: float | Callable[[int], float] = ..., transactional: bool = ...,
        timeout: float | None = ..., unique_after_done: float = ..., unique_while_buried: bool = ...,
    ) -> Callable[[Callable[P, R]], Task[P, R]]: ...

    def task(
        self, fn: Callable[..., Any] | None = None, /, *, name: str | None = None,
        queue: str = "default", priority: int = 100, max_attempts: int = 5, lease: float = 30.0,
        retry_backoff: float | Callable[[int], float] = 1.0, transactional: bool = False,
        timeout: float | None = None, unique_after_done: float = 0.0,
        unique_while_buried: bool = False,
    ) -> Any:
        """Register a task: ``@app.task`` or ``@app.task(queue="mail", max_attempts=3)``."""
        try:
            validation.name(queue, "queue")
            validation.whole(priority, "priority", *validation.PRIORITY_RANGE)
            validation.whole(max_attempts, "max_attempts", 1, validation.PRIORITY_RANGE[1])
            validation.seconds(lease, "lease", lo=0.001)
            if timeout is not None:
                validation.seconds(timeout, "timeout", lo=0.0)
            if not callable(retry_backoff):
                validation.seconds(retry_backoff, "retry_backoff")
            validation.seconds(unique_after_done, "unique_after_done")
            validation.flag(unique_while_buried, "unique_while_buried")
        except InvalidJob as exc:
            raise ConfigError(f"task {name or getattr(fn, '__qualname__', '')}: {exc}") from None

        def register(f: Callable[..., Any]) -> Task[Any, Any]:
            task_name = name or f"{f.__module__}.{f.__qualname__}"
            try:
                validation.name(task_name, "task name")
            except InvalidJob as exc:
                raise ConfigError(str(exc)) from None
            if transactional and _is_async(f):
                raise ConfigError(
                    f"task {task_name}: transactional tasks must be plain (sync) functions"
                )
            if task_name in self.tasks and self.tasks[task_name].fn is not f:
                raise ConfigError(f"two tasks are registered under the name {task_name!r}")
            t = Task(self, f, name=task_name, queue=queue, priority=priority,
                     max_attempts=max_attempts, lease=lease, retry_backoff=retry_backoff,
                     transactional=transactional, timeout=timeout,
                     unique_after_done=unique_after_done, unique_while_buried=unique_while_buried)
            if self._backend is not None:  # else checked when the backend opens
                _vet_task(t, self._backend)
            self.tasks[task_name] = t
            return t

        return register(fn) if fn is not None else register

    # --- producing ------------------------------------------------------------------------
    def enqueue(
        self, name: str, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> JobHandle:
        """Enqueue by task name (the producer need not import the task)."""
        return self._enqueue_calls(name, [(args, kwargs or {})], _options(options))[0]

    def enqueue_many(
        self, jobs: Iterable[tuple[str, Sequence[Any], Mapping[str, Any]]], **options: Any
    ) -> list[JobHandle]:
        """Enqueue ``(task_name, args, kwargs)`` triples in one transaction."""
        opts = _options(options)
        now = self.clock()
        templates: dict[str, NewJob] = {}
        news = []
        for name, args, kwargs in jobs:
            t = templates.get(name)
            if t is None:
                t = templates[name] = self._new_job(name, (), {}, opts, now)
            news.append(_with_payload(t, codec.encode_payload(name, args, kwargs)))
        return self._handles(self.backend.put(news, now=now, connection=opts.connection))

    def _enqueue_calls(
        self, name: str, calls: Sequence[tuple[Sequence[Any], Mapping[str, Any]]],
        opts: EnqueueOptions,
    ) -> list[JobHandle]:
        now = self.clock()
        t = self._new_job(name, (), {}, opts, now)  # all but the payload is shared
        encode = codec.encode_payload
        news = [_with_payload(t, encode(name, a, k)) for a, k in calls]
        return self._handles(self.backend.put(news, now=now, connection=opts.connection))

    def _handles(self, ids: Sequence[int]) -> list[JobHandle]:
        return [JobHandle(self, i, i.state if isinstance(i, Existing) else None) for i in ids]

    def _new_job(
        self, name: str, args: Sequence[Any], kwargs: Mapping[str, Any], opts: EnqueueOptions,
        now: float,
    ) -> NewJob:
        """All but the payload of a job, every option checked (:mod:`crashonly.validation`) and
        allowed by the backend's capabilities."""
        task = self.tasks.get(name)
        _vet_options(name, opts, self.backend)
        key = opts.unique_key
        after_done = opts.unique_after_done
        while_buried = opts.unique_while_buried
        return NewJob(
            task=validation.name(name, "task name"),
            queue=validation.name(
                opts.queue if opts.queue is not None else (task.queue if task else "default"),
                "queue",
            ),
            payload=codec.encode_payload(name, args, kwargs),
            priority=validation.whole(
                opts.priority if opts.priority is not None else (task.priority if task else 100),
                "priority", *validation.PRIORITY_RANGE,
            ),
            run_at=validation.run_at(opts.run_at, opts.delay, now),
            max_attempts=task.max_attempts if task else 5,
            lease=task.lease if task else 30.0,
            unique_key=None if key is None else validation.name(key, "unique_key", validation.MAX_KEY),
            unique_after_done=validation.seconds(
                after_done if after_done is not None else (task.unique_after_done if task else 0.0),
                "unique_after_done",
            ),
            unique_while_buried=validation.flag(
                while_buried if while_buried is not None
                else (task.unique_while_buried if task else False),
                "unique_while_buried",
            ),
        )

    # --- inspecting and managing ------------------------------------------------------------
    def get_job(self, job_id: int, *, payload: bool = True) -> Job:
        """The job; ``payload=False`` leaves its arguments unread (``payload`` is ``""``), for
        status polls."""
        job = self._require("results", f"reading job {job_id}").get(int(job_id), payload=payload)
        if job is None:
            raise JobNotFound(
                f"no job {job_id} (never existed, deleted, or purged after its retention period)"
            )
        return job

    def list_jobs(
        self, state: JobState | str | None = None, queue: str | None = None, limit: int = 100
    ) -> list[Job]:
        st = JobState(state) if state is not None else None
        return self._require("inspection", "listing jobs").list(state=st, queue=queue, limit=limit)

    def stats(self) -> dict[str, dict[str, int]]:
        return self._require("inspection", "queue statistics").stats()

    def retry(self, job_id: int) -> bool:
        """Kick a buried job back to ready (attempts reset); False if it was not buried."""
        backend = self._require("inspection", f"retrying job {job_id}")
        self.get_job(job_id)
        return backend.kick([job_id], now=self.clock()) == 1

    def retry_all_buried(self) -> int:
        return self._require("inspection", "retrying buried jobs").kick(None, now=self.clock())

    def delete(self, job_id: int) -> bool:
        return self._require("inspection", f"deleting job {job_id}").delete(int(job_id))

    def handle(self, job_id: int) -> JobHandle:
        return JobHandle(self, job_id)

    def migrate(self) -> int:
        return self.backend.migrate()

    def recover(self) -> RecoveryReport:
        return self.backend.recover(
            now=self.clock(), poison_after=self.poison_after, retention=self.retention
        )

    # --- in-process runner ------------------------------------------------------------------
    def run_worker_once(self, queues: Sequence[str] | None = None, limit: int = 100) -> int:
        """Reserve up to ``limit`` ready jobs, run them here one after another (async tasks on a
        fresh event loop) and settle them in one transaction. Returns how many ran.

        For tests, scripts and the quick start; production uses ``crashonly worker``.
        """
        from .execution import Prepared, prepare, run_async, run_sync

        backend = self.backend
        if self._local_worker is None:
            self._local_worker = f"{hostname()}:{os.getpid()}:{os.urandom(4).hex()}"
            now = self.clock()
            backend.register_worker(WorkerInfo(
                id=self._local_worker, host=hostname(), pid=os.getpid(),
                started_at=now, heartbeat_at=now, queues=list(queues or []),
            ))
        self.recover()
        qs = list(queues) if queues else sorted({t.queue for t in self.tasks.values()} or {"default"})
        reservations, _ = backend.reserve(
            worker_id=self._local_worker, queues=qs, limit=limit, now=self.clock()
        )
        settlements = []
        for r in reservations:
            task = self.tasks.get(r.job.task)
            if task is not None and task.is_async:
                import asyncio

                p = prepare(self, r)
                outcome = asyncio.run(run_async(self, p)) if isinstance(p, Prepared) else p
            else:
                outcome = run_sync(self, r)
            if outcome.settlement is not None:
                settlements.append(outcome.settlement)
        backend.settle(settlements, now=self.clock())
        return len(reservations)

    def drain(self, queues: Sequence[str] | None = None, max_jobs: int | None = None) -> int:
        """Run ready jobs in this process until none is ready; return how many ran."""
        total = 0
        while max_jobs is None or total < max_jobs:
            ran = self.run_worker_once(queues, limit=100 if max_jobs is None else min(100, max_jobs - total))
            if not ran:
                break
            total += ran
        return total


def _with_payload(t: NewJob, payload: str) -> NewJob:
    # Spelled out: dataclasses.replace costs twice as much, and bulk enqueue is a hot path.
    return NewJob(task=t.task, queue=t.queue, payload=payload, priority=t.priority, run_at=t.run_at,
                  max_attempts=t.max_attempts, lease=t.lease, unique_key=t.unique_key,
                  unique_after_done=t.unique_after_done, unique_while_buried=t.unique_while_buried)


def _lacks(backend: Backend, capability: str, what: str) -> str:
    scheme = backend.url.split("://", 1)[0]
    return (f"{what} needs a backend with {capability}, and the {scheme}:// backend declares none "
            "(docs/backends.md, \"Capabilities\")")


def _vet_task(task: Task[Any, Any], backend: Backend) -> None:
    """Refuse, when the task is declared or the backend opens, what the backend cannot do."""
    caps: Capabilities = backend.capabilities
    if task.transactional and not caps.transactional:
        raise ConfigError(_lacks(backend, "transactional", f"task {task.name} (transactional=True)"))
    if task.priority != 100 and not caps.priorities:
        raise ConfigError(_lacks(backend, "priorities", f"task {task.name} (priority={task.priority})"))


def _vet_options(name: str, opts: EnqueueOptions, backend: Backend) -> None:
    # On every enqueue: plain attribute tests, the message only formatted on refusal.
    caps: Capabilities = backend.capabilities
    lacking = (
        "transactional" if opts.connection is not None and not caps.transactional
        else "priorities" if opts.priority is not None and not caps.priorities
        else "delays" if (opts.delay is not None or opts.run_at is not None) and not caps.delays
        else "unique_keys" if opts.unique_key is not None and not caps.unique_keys
        else None
    )
    if lacking is not None:
        option = {"transactional": "connection=", "priorities": "priority=",
                  "delays": "delay= or run_at=", "unique_keys": "unique_key="}[lacking]
        raise ConfigError(_lacks(backend, lacking, f"enqueueing {name} with {option}"))


def _is_async(fn: Callable[..., Any]) -> bool:
    """``inspect.iscoroutinefunction`` without importing inspect (≈15 ms of worker start-up)."""
    code = getattr(getattr(fn, "__func__", fn), "__code__", None)
    return bool(code is not None and code.co_flags & 0x80)  # CO_COROUTINE


def _options(options: Mapping[str, Any]) -> EnqueueOptions:
    unknown = set(options) - _OPTIONS
    if unknown:
        raise TypeError(
            f"unknown enqueue option(s): {', '.join(sorted(unknown))} "
            f"(known: {', '.join(sorted(_OPTIONS))}); pass task arguments in args= and kwargs="
        )
    return replace(EnqueueOptions(), **options)
