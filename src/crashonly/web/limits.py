"""Limits that keep one web process up against slow, greedy or hostile clients.

``crashonly web`` puts these around every app (the defaults are those of :class:`Limits`):

* **connections**: at most ``max_connections`` open at once (default 1000, and never more than
  three quarters of the process's file-descriptor limit). A connection beyond that is answered
  ``503`` + ``Retry-After: 1`` + ``Connection: close`` as soon as its request arrives, and closed:
  it never reaches the app, and descriptors are never exhausted by idle or streaming clients.
* **request bodies**: the whole body must arrive within ``body_timeout`` seconds of the head
  (default 30). A body dripped a byte at a time gets ``408`` + ``Connection: close``; the app's
  ``receive()`` sees ``http.disconnect``. (The head itself is bounded by ``--header-timeout``.)
* **accept errors** (``EMFILE`` when descriptors run out, ``ENOBUFS``…) are logged one line at a
  time, at most one every 10 s with a count, never a traceback per attempt.
* **``X-Content-Type-Options: nosniff``** on every response that does not set it, so a browser
  never runs as a script or a page what was served as data.

Job-status streams have their own count and lifetime caps (:func:`crashonly.web.job_router`).
Nothing here imports uvicorn: :func:`guard` is plain ASGI and :func:`limit_connections` wraps
any asyncio protocol factory.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, cast

__all__ = ["MAX_CONNECTIONS", "Limits", "LogThrottle", "guard", "guard_loop",
           "limit_connections"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger("crashonly.web")

MAX_CONNECTIONS = 1000
_REFUSAL = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: 27\r\nRetry-After: 1\r\nConnection: close\r\n"
            b"X-Content-Type-Options: nosniff\r\n\r\ntoo many connections, retry")


@dataclass(frozen=True, kw_only=True, slots=True)
class Limits:
    max_connections: int = MAX_CONNECTIONS
    body_timeout: float = 30.0

    def connection_cap(self) -> int:
        """``max_connections``, lowered to three quarters of ``RLIMIT_NOFILE`` so that the app
        keeps descriptors for its own files and database connections."""
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            return self.max_connections
        return max(1, min(self.max_connections, soft * 3 // 4))


class LogThrottle:
    """At most one log line every ``every`` seconds; the next one says how many were held
    back. For errors that come in floods (one per request, one per accept attempt)."""

    def __init__(self, logger: logging.Logger, every: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.every = every
        self.clock = clock
        self._lock = threading.Lock()
        self._last = -float("inf")
        self._held = 0

    def warning(self, message: str, *args: object) -> bool:
        """Log ``message`` unless one was logged less than ``every`` seconds ago."""
        with self._lock:
            now = self.clock()
            if now - self._last < self.every:
                self._held += 1
                return False
            held, self._held, self._last = self._held, 0, now
        if held:
            message += f" ({held} more like this in the last {self.every:g} s)"
        self.logger.warning(message, *args)
        return True


# --- connections ----------------------------------------------------------------------------

class _Refusal(asyncio.Protocol):
    """A connection over the limit: answered 503 once its request starts arriving, then closed
    after the client's side ends (or 1 s), so the answer is not lost to a reset."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.answered = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # a TCP or unix stream
        asyncio.get_running_loop().call_later(2.0, transport.close)

    def data_received(self, data: bytes) -> None:
        if self.transport is None or self.answered:
            return
        self.answered = True
        self.transport.write(_REFUSAL)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        asyncio.get_running_loop().call_later(1.0, self.transport.close)

    def eof_received(self) -> bool | None:
        return False  # the client is done: close


def limit_connections(protocol: Callable[..., asyncio.Protocol], cap: int
                      ) -> Callable[..., asyncio.Protocol]:
    """A factory for uvicorn's ``http=``: ``protocol`` (a uvicorn HTTP protocol class) while
    fewer than ``cap`` connections are open, a refusal past it. uvicorn passes every protocol
    its ``server_state``, whose ``connections`` are the open ones."""

    def create(*args: Any, **kwargs: Any) -> asyncio.Protocol:
        if len(kwargs["server_state"].connections) < cap:
            return protocol(*args, **kwargs)
        _refused.warning("connection limit reached (%d open): answering 503", cap)
        return _Refusal()

    return create


_refused = LogThrottle(log)
_accept_errors = LogThrottle(log)


def guard_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Log the event loop's accept errors one throttled line at a time (asyncio logs each with
    a traceback, and retries every second per listener while descriptors are exhausted)."""
    previous = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message", ""))
        # asyncio retries a failed accept a second later, by a timer that also fires after
        # the listener was closed for a drain ("Invalid file descriptor: -1"): both are the
        # same condition, not a bug to print a traceback for.
        if "accept" in message or "_start_serving" in repr(context.get("handle")):
            exc = context.get("exception")
            _accept_errors.warning("cannot accept connections: %s", exc or message)
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


# --- requests -------------------------------------------------------------------------------

_NOSNIFF = (b"x-content-type-options", b"nosniff")
_body_timeouts = LogThrottle(log)


async def _timeout_response(send: Send, seconds: float) -> None:
    body = f"request body not received within {seconds:g} s\n".encode()
    await send({"type": "http.response.start", "status": 408, "headers": [
        (b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"), _NOSNIFF]})
    await send({"type": "http.response.body", "body": body})


def guard(app: ASGIApp, limits: Limits) -> ASGIApp:
    """``app`` with the body deadline and ``nosniff`` (see the module docstring)."""
    body_timeout = limits.body_timeout

    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + body_timeout
        body_done = timed_out = started = False

        async def receive_() -> Message:
            nonlocal body_done, timed_out
            if timed_out:
                return {"type": "http.disconnect"}
            if body_done:  # e.g. a streaming response listening for the disconnect
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                timed_out = True
                _body_timeouts.warning("request body not received within %g s: 408",
                                       body_timeout)
                if not started:
                    await _timeout_response(send, body_timeout)
                return {"type": "http.disconnect"}
            if message["type"] != "http.request" or not message.get("more_body"):
                body_done = True
            return message

        async def send_(message: Message) -> None:
            nonlocal started
            if timed_out:
                return  # our 408 went instead, or the client is treated as gone
            if message["type"] == "http.response.start":
                started = True
                headers = message.get("headers", ())
                if not any(k.lower() == _NOSNIFF[0] for k, _ in headers):
                    message = dict(message)
                    message["headers"] = [*headers, _NOSNIFF]
            await send(message)

        try:
            await app(scope, receive_, send_)
        except Exception:
            if not timed_out:
                raise
            # the app failed on the disconnect we gave it (Starlette raises ClientDisconnect):
            # expected, and already answered

    return guarded
