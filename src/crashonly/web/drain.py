"""The front door of a web process: health probes, and what changes while it drains.

Every request passes through :class:`FrontDoor`, the outermost ASGI layer ``crashonly web``
puts around the user's app:

* ``/livez`` answers 200 while the process runs (a liveness probe restarts a process only if
  it is wedged, so it never depends on a backing service);
* ``/readyz`` answers 200, then 503 from the moment the process starts draining, so a load
  balancer that polls it stops sending new work before the process goes away;
* while draining, every response carries ``Connection: close``: a client that sent its next
  request on a kept-alive connection gets it served and learns, in the response itself, not to
  send another one there (a bare FIN after the response races with that next request);
* a request still running when the grace period ends is cancelled; if it had not started its
  response it gets ``503`` with ``Retry-After: 0`` instead of the server's generic 500, so the
  client knows another process will take the retry — but only when a retry is harmless
  (:func:`retry_is_safe`); any other request's connection is closed by the server before the
  cancel, so it gets no answer it could take for "not done";
* long-running responses (long-polls, server-sent events) find the :class:`Drain` event in the
  ASGI scope (``scope["extensions"]["crashonly.drain"]["event"]``, see :func:`drain_event`)
  and end early with a reconnect hint instead of holding the process up until the grace ends.

Nothing here imports uvicorn: the layer is plain ASGI.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["EXTENSION", "IDEMPOTENT", "Drain", "FrontDoor", "drain_event", "retry_is_safe"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

EXTENSION = "crashonly.drain"
_CLOSE = (b"connection", b"close")

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})  # RFC 9110 9.2.2


def retry_is_safe(scope: Scope, *, wsgi: bool) -> bool:
    """May a request cut at the grace period be answered "503, retry"? Only when its work stops
    with the cancel (ASGI: a WSGI handler's thread runs on) and a second run is harmless (an
    idempotent method): a POST cut half-way may have placed the order already."""
    return not wsgi and scope.get("method", "GET") in IDEMPOTENT


class Drain:
    """Whether this process is draining; one per process, set once, never cleared."""

    def __init__(self) -> None:
        self.draining = False
        self.event = asyncio.Event()

    def begin(self) -> None:
        self.draining = True
        self.event.set()


def drain_event(scope: Scope) -> asyncio.Event | None:
    """The event set when the serving process starts to drain; None under another server."""
    extension = (scope.get("extensions") or {}).get(EXTENSION)
    event = extension.get("event") if isinstance(extension, dict) else None
    return event if isinstance(event, asyncio.Event) else None


async def _plain(send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]]) -> None:
    await send({
        "type": "http.response.start", "status": status,
        "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(body)).encode()),
                    (b"cache-control", b"no-store"), *extra],
    })
    await send({"type": "http.response.body", "body": body})


class FrontDoor:
    """Probes and drain behaviour around ``app`` (see the module docstring)."""

    def __init__(self, app: ASGIApp, drain: Drain, *, livez: str = "/livez",
                 readyz: str = "/readyz") -> None:
        self.app = app
        self.drain = drain
        self.livez = livez
        self.readyz = readyz
        self._extension = {"event": drain.event}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                self._mark(scope)
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path == self.livez:
            await _plain(send, 200, b"alive\n", [])
            return
        if path == self.readyz:
            if self.drain.draining:
                await _plain(send, 503, b"draining\n", [(b"retry-after", b"0"), _CLOSE])
            else:
                await _plain(send, 200, b"ready\n", [])
            return
        self._mark(scope)
        drain = self.drain
        started = False

        async def send_(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = message.get("headers", ())
                if drain.draining and not any(k.lower() == b"connection" for k, _ in headers):
                    message = dict(message)
                    message["headers"] = [*headers, _CLOSE]
            await send(message)

        try:
            await self.app(scope, receive, send_)
        except asyncio.CancelledError:
            # Only the end of the grace period cancels a request (server.py), and this is the
            # request task's outermost frame: answer what can still be answered and end the
            # task quietly rather than have the server log a traceback per request.
            if not started:
                await _plain(send, 503, b"server restarting, retry\n",
                             [(b"retry-after", b"0"), _CLOSE])

    def _mark(self, scope: Scope) -> None:
        extensions = scope.get("extensions")
        if extensions is None:
            extensions = scope["extensions"] = {}
        extensions[EXTENSION] = self._extension
