"""Job status over HTTP: a router to mount in a Starlette (or FastAPI) app.

``Mount("/jobs", app=job_router(app, authorize=...))`` serves, for a job of the queue of ``app``:

=======================  ====================================================================
``GET /{id}``            the job now: ``200`` and its JSON view (:func:`job_view`), ``404``
``GET /{id}/wait``       long-poll, ``?timeout=`` seconds (default 30, at most ``max_wait``):
                         ``200`` once the job is final (done or buried), ``202`` with its
                         state if the timeout came first (ask again), ``503`` + ``Retry-After:
                         0`` + ``Connection: close`` when this process is draining (ask again,
                         another process will answer)
``GET /{id}/events``     server-sent events: one ``state`` event per change, the stream ends
                         after the final one. Event ids name states, so a reconnecting client
                         (``Last-Event-ID``) is not sent what it has; a client that has the
                         final event gets ``204``, which tells ``EventSource`` to stop. While
                         draining, and after ``stream_lifetime`` seconds, the stream ends with
                         ``retry:`` and a ``reconnect`` event.
=======================  ====================================================================

Who may see a job is the app's decision, and it must make it: job ids are sequential, hence
guessable, so ``authorize(request, job) -> bool`` (sync or async) is required; a refused job is
a 404, like a missing one. ``public=True`` shows every job to anyone who can reach the server —
only for jobs whose existence, task name and state are no one's business. A job's result and
the last line of a buried job's error are shown only with ``expose_result=True``; its arguments
and traceback never.

At most ``max_streams`` long-polls and event streams are open at once per router (more get
``503`` + ``Retry-After: 1``). The database is polled (backing off from 20 ms to 0.5 s), on a
worker thread, reading the job's state but never its arguments, so waiting holds no database
connection between polls and works with every backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import importlib
import inspect
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route, Router

from ..app import App
from ..errors import BackendUnavailable, ConfigError, CrashonlyError, JobNotFound
from ..job import Job, JobState
from .drain import drain_event
from .limits import LogThrottle

__all__ = ["FINAL", "job_router", "job_view"]

FINAL = (JobState.DONE, JobState.BURIED)
_MAX_ID = 2**63 - 1
_HEARTBEAT = 15.0
_BUSY = {"retry-after": "1", "cache-control": "no-store"}
# an outage (database down, or out of file descriptors under a flood of streams) comes once
# per request: one line per 10 s, and a 503 the client retries, never a 500 with a traceback
_outages = LogThrottle(logging.getLogger("crashonly.web.jobs"))

Authorize = Callable[[Request, Job], bool | Awaitable[bool]]


def job_view(job: Job, *, expose_result: bool = False) -> dict[str, Any]:
    """What HTTP clients see of a job; its result and error only with ``expose_result``."""
    error = None
    if expose_result and job.last_error:
        lines = job.last_error.strip().splitlines()
        error = lines[-1] if lines else None
    result = job.result if expose_result and job.state is JobState.DONE else None
    return {
        "id": job.id, "task": job.task, "state": job.state.value,
        "final": job.state in FINAL, "result": result,
        "error": error, "attempts": job.attempts, "max_attempts": job.max_attempts,
        "created_at": job.created_at, "finished_at": job.finished_at,
    }


def _event_id(job: Job) -> str:
    return f"{job.state.value}-{job.attempts}"


def _sse(job: Job, expose_result: bool) -> bytes:
    data = json.dumps(job_view(job, expose_result=expose_result), separators=(",", ":"))
    return f"id: {_event_id(job)}\nevent: state\ndata: {data}\n\n".encode()


class _JSON(JSONResponse):
    """JSON in ASCII: a result or error may hold a lone surrogate (``os.fsdecode`` of a file
    name), which UTF-8 cannot encode; the ``\\udcff`` escape is valid JSON for the same text."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, separators=(",", ":")).encode("ascii")


def _not_found(job_id: object) -> JSONResponse:
    return _JSON({"error": f"no job {job_id}"}, status_code=404)


def job_router(app: App, *, authorize: Authorize | None = None, public: bool = False,
               expose_result: bool = False, max_wait: float = 60.0, default_wait: float = 30.0,
               max_streams: int = 100, stream_lifetime: float = 300.0) -> Router:
    """A router with the three routes above, for the jobs of ``app``. ``authorize`` is
    required unless ``public=True`` (see the module docstring)."""
    from anyio.to_thread import run_sync

    # anyio imports its asyncio backend, and the app its database driver, at first use: out of
    # file descriptors (a flood of streams) those imports fail half-way, and every request
    # after them with a 500. Import both now; a backend that cannot open yet is left to the
    # requests, which answer 503.
    importlib.import_module("anyio._backends._asyncio")
    with contextlib.suppress(CrashonlyError):
        app.backend  # noqa: B018 (opening it imports its module)
    if authorize is None and not public:
        raise ConfigError("job_router needs authorize=(request, job) -> bool: job ids are "
                          "sequential, so anyone could read every job; public=True shows "
                          "every job to anyone (dangerous)")
    if authorize is not None and public:
        raise ConfigError("job_router takes authorize= or public=True, not both")
    open_streams = 0

    def view(job: Job) -> dict[str, Any]:
        return job_view(job, expose_result=expose_result)

    async def fetch(request: Request, *, again: bool = False) -> Job | JSONResponse:
        """The job, if this request may see it. The first fetch of a request reads the job
        whole for ``authorize``; polls (``again``) read its state only, never its arguments,
        and are not asked again."""
        raw = request.path_params["job_id"]
        # the length first: int() of more than 4300 digits raises (CVE-2020-10735)
        if len(raw) > 19 or not raw.isascii() or not raw.isdigit() or int(raw) > _MAX_ID:
            return _not_found(raw[:40])
        whole = authorize is not None and not again
        try:
            job = await run_sync(lambda: app.get_job(int(raw), payload=whole))
        except JobNotFound:
            return _not_found(int(raw))
        except (BackendUnavailable, OSError) as exc:
            # OSError: out of descriptors, even a first import of the backend's module fails
            if isinstance(exc, OSError) and exc.errno not in (errno.EMFILE, errno.ENFILE):
                raise
            _outages.warning("job store unavailable, answering 503: %s", exc)
            return _JSON({"error": "job store unavailable, retry"}, status_code=503,
                         headers=_BUSY)
        if whole and authorize is not None:
            allowed = authorize(request, job)
            if inspect.isawaitable(allowed):
                allowed = await allowed
            if not allowed:
                return _not_found(int(raw))
            # Never shown, and a stream keeps its first job until the next poll: let a 20 MB
            # argument go now rather than hold it for each open stream.
            job.payload = ""
        return job

    def take_stream() -> bool:
        nonlocal open_streams
        if open_streams >= max_streams:
            return False
        open_streams += 1
        return True

    def give_stream() -> None:
        nonlocal open_streams
        open_streams -= 1

    def busy() -> JSONResponse:
        return _JSON({"error": "too many open job streams, retry"}, status_code=503,
                     headers=_BUSY)

    async def pause(request: Request, seconds: float) -> None:
        drain = drain_event(request.scope)
        if drain is None:
            await asyncio.sleep(seconds)
            return
        try:
            await asyncio.wait_for(drain.wait(), seconds)
        except TimeoutError:
            pass

    def draining(request: Request) -> bool:
        drain = drain_event(request.scope)
        return drain is not None and drain.is_set()

    async def status(request: Request) -> Response:
        job = await fetch(request)
        if isinstance(job, Response):
            return job
        return _JSON(view(job), headers={"cache-control": "no-store"})

    async def wait(request: Request) -> Response:
        if not take_stream():
            return busy()
        try:
            return await long_poll(request)
        finally:
            give_stream()

    async def long_poll(request: Request) -> Response:
        raw = request.query_params.get("timeout", str(default_wait))
        try:
            timeout = float(raw)
        except ValueError:
            timeout = -1.0
        if not 0 <= timeout <= max_wait:  # also refuses nan
            return _JSON({"error": f"timeout must be 0 to {max_wait:g} seconds"},
                         status_code=400)
        deadline = time.monotonic() + timeout
        interval = 0.02
        again = False
        while True:
            job = await fetch(request, again=again)
            again = True
            if isinstance(job, Response):
                return job
            if job.state in FINAL:
                return _JSON(view(job), headers={"cache-control": "no-store"})
            if draining(request):
                return _JSON({**view(job), "reconnect": True}, status_code=503,
                             headers={"retry-after": "0", "connection": "close",
                                      "cache-control": "no-store"})
            left = deadline - time.monotonic()
            if left <= 0 or await request.is_disconnected():
                return _JSON(view(job), status_code=202,
                             headers={"cache-control": "no-store"})
            await pause(request, min(interval, left))
            interval = min(0.5, interval * 1.5)

    async def events(request: Request) -> Response:
        if not take_stream():
            return busy()
        try:
            first = await fetch(request)
        except BaseException:
            give_stream()
            raise
        seen = request.headers.get("last-event-id")
        if isinstance(first, Response) or (first.state in FINAL and seen == _event_id(first)):
            give_stream()
            # 204: the client has it all, EventSource stops
            return first if isinstance(first, Response) else Response(status_code=204)

        async def stream() -> AsyncIterator[bytes]:
            nonlocal seen
            job: Job | Response = first
            interval = 0.02
            opened = quiet_since = time.monotonic()
            while isinstance(job, Job):
                if _event_id(job) != seen:
                    seen = _event_id(job)
                    quiet_since = time.monotonic()
                    yield _sse(job, expose_result)
                if job.state in FINAL:
                    return
                if draining(request) or time.monotonic() - opened > stream_lifetime:
                    yield b"retry: 250\nevent: reconnect\ndata: {}\n\n"
                    return
                if time.monotonic() - quiet_since > _HEARTBEAT:
                    quiet_since = time.monotonic()
                    yield b": still waiting\n\n"
                await pause(request, interval)
                interval = min(0.5, interval * 1.5)
                job = await fetch(request, again=True)

        return _Stream(give_stream, stream(), media_type="text/event-stream", headers={
            "cache-control": "no-store", "x-accel-buffering": "no"})

    return Router(routes=[
        Route("/{job_id}", status, methods=["GET", "HEAD"]),
        Route("/{job_id}/wait", wait, methods=["GET"]),
        Route("/{job_id}/events", events, methods=["GET"]),
    ])


class _Stream(StreamingResponse):
    """An event stream that gives its slot back however it ends (finished, client gone,
    cancelled), even if its body was never started."""

    def __init__(self, release: Callable[[], None], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._release = release

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()
