"""Job status over HTTP: a router to mount in a Starlette (or FastAPI) app.

``Mount("/jobs", app=job_router(app))`` serves, for a job of the queue of ``app``:

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
                         draining the stream ends with ``retry:`` and a ``reconnect`` event.
=======================  ====================================================================

Job ids are sequential, hence guessable: pass ``authorize(request, job) -> bool`` (sync or
async) to show a job only to whom it belongs; a refused job is a 404, like a missing one.
Results and the last line of a buried job's error are shown, never its arguments or traceback.

The database is polled (backing off from 20 ms to 0.5 s), on a worker thread, so waiting
holds no database connection between polls and works with every backend.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route, Router

from ..app import App
from ..errors import JobNotFound
from ..job import Job, JobState
from .drain import drain_event

__all__ = ["FINAL", "job_router", "job_view"]

FINAL = (JobState.DONE, JobState.BURIED)
_MAX_ID = 2**63 - 1
_HEARTBEAT = 15.0

Authorize = Callable[[Request, Job], bool | Awaitable[bool]]


def job_view(job: Job) -> dict[str, Any]:
    """What HTTP clients see of a job."""
    error = None
    if job.last_error:
        lines = job.last_error.strip().splitlines()
        error = lines[-1] if lines else None
    return {
        "id": job.id, "task": job.task, "state": job.state.value,
        "final": job.state in FINAL, "result": job.result if job.state is JobState.DONE else None,
        "error": error, "attempts": job.attempts, "max_attempts": job.max_attempts,
        "created_at": job.created_at, "finished_at": job.finished_at,
    }


def _event_id(job: Job) -> str:
    return f"{job.state.value}-{job.attempts}"


def _sse(job: Job) -> bytes:
    data = json.dumps(job_view(job), separators=(",", ":"))
    return f"id: {_event_id(job)}\nevent: state\ndata: {data}\n\n".encode()


def _not_found(job_id: object) -> JSONResponse:
    return JSONResponse({"error": f"no job {job_id}"}, status_code=404)


def job_router(app: App, *, authorize: Authorize | None = None, max_wait: float = 60.0,
               default_wait: float = 30.0) -> Router:
    """A router with the three routes above, for the jobs of ``app``."""
    from anyio.to_thread import run_sync

    async def fetch(request: Request) -> Job | JSONResponse:
        raw = request.path_params["job_id"]
        if not raw.isascii() or not raw.isdigit() or int(raw) > _MAX_ID:
            return _not_found(raw[:40])
        try:
            job = await run_sync(app.get_job, int(raw))
        except JobNotFound:
            return _not_found(int(raw))
        if authorize is not None:
            allowed = authorize(request, job)
            if inspect.isawaitable(allowed):
                allowed = await allowed
            if not allowed:
                return _not_found(int(raw))
        return job

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
        return JSONResponse(job_view(job), headers={"cache-control": "no-store"})

    async def wait(request: Request) -> Response:
        raw = request.query_params.get("timeout", str(default_wait))
        try:
            timeout = float(raw)
        except ValueError:
            timeout = -1.0
        if not 0 <= timeout <= max_wait:  # also refuses nan
            return JSONResponse({"error": f"timeout must be 0 to {max_wait:g} seconds"},
                                status_code=400)
        deadline = time.monotonic() + timeout
        interval = 0.02
        while True:
            job = await fetch(request)
            if isinstance(job, Response):
                return job
            if job.state in FINAL:
                return JSONResponse(job_view(job), headers={"cache-control": "no-store"})
            if draining(request):
                return JSONResponse({**job_view(job), "reconnect": True}, status_code=503,
                                    headers={"retry-after": "0", "connection": "close",
                                             "cache-control": "no-store"})
            left = deadline - time.monotonic()
            if left <= 0 or await request.is_disconnected():
                return JSONResponse(job_view(job), status_code=202,
                                    headers={"cache-control": "no-store"})
            await pause(request, min(interval, left))
            interval = min(0.5, interval * 1.5)

    async def events(request: Request) -> Response:
        first = await fetch(request)
        if isinstance(first, Response):
            return first
        seen = request.headers.get("last-event-id")
        if first.state in FINAL and seen == _event_id(first):
            return Response(status_code=204)  # the client has it all: EventSource stops

        async def stream() -> AsyncIterator[bytes]:
            nonlocal seen
            job: Job | Response = first
            interval = 0.02
            quiet_since = time.monotonic()
            while isinstance(job, Job):
                if _event_id(job) != seen:
                    seen = _event_id(job)
                    quiet_since = time.monotonic()
                    yield _sse(job)
                if job.state in FINAL:
                    return
                if draining(request):
                    yield b"retry: 250\nevent: reconnect\ndata: {}\n\n"
                    return
                if time.monotonic() - quiet_since > _HEARTBEAT:
                    quiet_since = time.monotonic()
                    yield b": still waiting\n\n"
                await pause(request, interval)
                interval = min(0.5, interval * 1.5)
                job = await fetch(request)

        return StreamingResponse(stream(), media_type="text/event-stream", headers={
            "cache-control": "no-store", "x-accel-buffering": "no"})

    return Router(routes=[
        Route("/{job_id}", status, methods=["GET", "HEAD"]),
        Route("/{job_id}/wait", wait, methods=["GET"]),
        Route("/{job_id}/events", events, methods=["GET"]),
    ])
