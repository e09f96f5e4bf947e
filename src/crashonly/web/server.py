"""uvicorn under crashonly's life cycle.

uvicorn parses HTTP; this module decides how the process starts and stops.

Starting: the listening sockets exist before the app is imported (so connections that arrive
meanwhile wait in the accept queue instead of being refused), the lifespan runs, then
``READY=1`` goes to ``$NOTIFY_SOCKET``.

Stopping, on the first SIGTERM/SIGINT (one function, :meth:`CrashonlyServer.shutdown`):

1. :class:`~crashonly.web.drain.Drain` begins: ``/readyz`` says 503, responses say
   ``Connection: close``, long-polls and event streams end with a reconnect hint.
2. We stop accepting and let the connections asyncio already accepted reach uvicorn
   (:meth:`CrashonlyServer._stop_accepting`). Connections still waiting in the accept queue are
   accepted (unless siblings share the socket: then they are theirs), *then* our listening
   descriptors are closed. uvicorn closes the listener first and resets a connection it has
   accepted but whose request it has not read yet (uvicorn PR #3124); here every connection
   that completed its handshake with this process gets its request served. Closing, never
   ``shutdown()``, leaves a socket shared with other processes working for them.
3. Busy connections finish their request. Then they, idle keep-alive connections, and fresh
   ones whose request has not arrived yet, get ``idle_linger`` seconds (:data:`IDLE_LINGER`) for
   a request already on its way; one that comes is served with ``Connection: close`` (so the
   client is told, rather than racing a bare FIN with its next request), then they are closed.
   Before closing, the socket is checked for bytes the loop has not read yet.
4. At ``grace`` seconds after the signal whatever still runs is cancelled and closed: the client
   gets 503 + ``Retry-After`` if its response had not started and a retry is harmless
   (:func:`~crashonly.web.drain.retry_is_safe`), else no answer at all; the lifespan shutdown
   runs; exit 0.
5. Whatever the handlers do, the process is gone ``grace`` + :data:`~crashonly.web.deadline.MARGIN`
   seconds after the signal (:class:`~crashonly.web.deadline.HardDeadline`). :func:`serve`
   therefore owns its process: it is ``crashonly web``'s, not a library call to embed.

A second signal skips the waiting. Slow clients are bounded too: a request head must arrive
within ``header_timeout`` of the connection (or of the previous response) or the connection is
closed, which uvicorn alone does not do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import socket
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..lifecycle import Shutdown, notify
from .deadline import HardDeadline
from .drain import ASGIApp, Drain, FrontDoor, retry_is_safe
from .limits import Limits, guard, guard_loop, limit_connections
from .listeners import describe

__all__ = ["IDLE_LINGER", "CrashonlyServer", "ServeOptions", "serve"]

log = logging.getLogger("crashonly.web")

IDLE_LINGER = 1.0
"""How long an idle connection stays open once draining starts (``--idle-linger``). A client
that reuses a pooled connection just as the server closes it sees "server disconnected", and
most clients (httpx, requests) do not retry: every request that arrives during the linger is
served with ``Connection: close`` instead, so the longer the linger, the fewer connections are
closed while idle. Measured on a loaded 2-core machine, 0.5 s still let one request in a few
hundred SIGTERMs race a close; 1 s did not. Truly idle pooled connections cost this much exit
time."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ServeOptions:
    grace: float = 10.0
    livez: str = "/livez"
    readyz: str = "/readyz"
    keep_alive: int = 5
    header_timeout: float = 10.0
    idle_linger: float = IDLE_LINGER
    access_log: bool = False
    root_path: str = ""
    proxy_headers: bool = False
    forwarded_allow_ips: str | None = None
    # Inherited from a process manager (--fd, LISTEN_FDS): siblings keep accepting from it.
    shared: bool = False
    limits: Limits = field(default_factory=Limits)  # connections, bodies: see limits.py
    # A WSGI app (run in threads by a2wsgi): cancelling its request does not stop its work.
    wsgi: bool = False


# --- connections --------------------------------------------------------------------------
# The same four hooks on each uvicorn HTTP protocol (h11 always; httptools when installed).
# ``conn`` is typed Any because uvicorn's protocols share these attributes by convention only.

def _busy(conn: Any) -> bool:
    return conn.cycle is not None and not conn.cycle.response_complete


def _arm(conn: Any, delay: float) -> None:
    timer: asyncio.TimerHandle | None = conn._co_timer
    if timer is not None:
        timer.cancel()
    conn._co_timer = conn.loop.call_later(delay, _expire, conn)


def _readable(conn: Any) -> bool:
    sock = conn.transport.get_extra_info("socket")
    if sock is None:
        return False
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    return bool(poller.poll(0))


def _expire(conn: Any) -> None:
    conn._co_timer = None
    if _busy(conn) or conn.transport.is_closing():
        return
    if _readable(conn):
        # Bytes (a request, or EOF) arrived after the loop last looked: closing now would
        # reset that request. Let the loop read them first; a request is then served.
        _arm(conn, 0.05)
        return
    conn.transport.close()


def _on_connect(conn: Any) -> None:
    conn._co_timer = None
    _arm(conn, conn.config._co_header_timeout)
    if conn.config._co_drain.draining:  # accepted from the queue after draining began
        _drain_connection(conn)


def _after_data(conn: Any) -> None:
    if _busy(conn) and conn._co_timer is not None:  # the request head has arrived
        conn._co_timer.cancel()
        conn._co_timer = None


def _after_response(conn: Any) -> None:
    if conn.transport.is_closing() or _busy(conn):  # closed, or a pipelined request started
        return
    if conn.config._co_drain.draining:
        _arm(conn, conn.config._co_idle_linger)
    else:
        _arm(conn, conn.timeout_keep_alive + conn.config._co_header_timeout)


def _drain_connection(conn: Any) -> None:
    if _busy(conn):
        # Not uvicorn's ``keep_alive = False``: a response whose headers went out before the
        # drain would end with a bare FIN, racing the client's next request on that connection.
        # The connection lingers after it instead, like an idle one (_after_response), and a
        # request in the linger is answered with "Connection: close" (drain.FrontDoor).
        return
    conn._unset_keepalive_if_required()
    _arm(conn, conn.config._co_idle_linger)


def _no_retry(conn: Any, *, wsgi: bool) -> bool:
    """A request is running on ``conn`` that must not be answered "retry" (see drain)."""
    cycle = getattr(conn, "cycle", None)  # None on a websocket connection
    return (cycle is not None and not cycle.response_complete
            and not retry_is_safe(cycle.scope, wsgi=wsgi))


def _lost(conn: Any) -> None:
    timer: asyncio.TimerHandle | None = getattr(conn, "_co_timer", None)
    if timer is not None:
        timer.cancel()


class _Draining:
    """The four hooks, mixed in front of each uvicorn HTTP protocol class (h11, httptools)."""

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        _on_connect(self)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)  # type: ignore[misc]
        _lost(self)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # type: ignore[misc]
        _after_data(self)

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        _after_response(self)

    def shutdown(self) -> None:
        _drain_connection(self)


class DrainingH11Protocol(_Draining, H11Protocol):  # type: ignore[misc]
    pass


def _protocol_class(http: str) -> type[asyncio.Protocol]:
    if http in ("auto", "httptools"):
        try:
            from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
        except ImportError:
            if http == "httptools":
                raise
        else:
            class DrainingHttpToolsProtocol(_Draining, HttpToolsProtocol):  # type: ignore[misc]
                pass

            return DrainingHttpToolsProtocol
    return DrainingH11Protocol


# --- the server ---------------------------------------------------------------------------

class CrashonlyServer(uvicorn.Server):
    """uvicorn's server with our signals, readiness and drain (see the module docstring)."""

    def __init__(self, config: uvicorn.Config, *, listeners: list[socket.socket],
                 options: ServeOptions, drain: Drain, stop: Shutdown,
                 deadline: HardDeadline) -> None:
        super().__init__(config)
        self.listeners = listeners
        self.options = options
        self.drain = drain
        self.stop = stop
        self.deadline = deadline
        self._wake = asyncio.Event()
        self.exit_reason = ""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # lifecycle.Shutdown owns the signals; uvicorn's own capture would re-raise them on exit.
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        loop = asyncio.get_running_loop()

        def wake() -> None:
            with contextlib.suppress(RuntimeError):  # the loop may be closed already
                loop.call_soon_threadsafe(self._wake.set)

        self.stop.on_signal(wake)
        guard_loop(loop)
        await super().startup(sockets=sockets)
        if self.started:
            notify("READY=1")
            where = ", ".join(describe(s) for s in self.listeners)
            log.info("ready on %s (pid %d, grace %g s)", where, os.getpid(), self.options.grace)

    async def main_loop(self) -> None:
        counter = 0
        while True:
            self._wake.clear()  # before the check: a signal after it sets the event again
            if self.stop.requested.is_set() or self.should_exit:
                return
            await self.on_tick(counter)  # counter % 10 == 0: refreshes the Date header
            counter = (counter + 10) % 864000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 1.0)

    def _protocol_factory(self) -> Callable[[], asyncio.Protocol]:
        config, state, loop = self.config, self.server_state, asyncio.get_running_loop()

        def create() -> asyncio.Protocol:
            protocol: asyncio.Protocol = config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=state, app_state=self.lifespan.state, _loop=loop)
            return protocol

        return create

    async def _stop_accepting(self) -> None:
        """Stop taking connections, and let those already taken reach uvicorn.

        asyncio accepts a burst of connections in one callback and hands each to a task that
        builds its transport on a later loop iteration; that transport registers with its
        ``Server``, which asserts the server is still open. ``Server.close()`` in between
        makes the task fail silently, and the socket it accepted is closed when the process
        exits: the kernel resets the connection (its request is unread). So: unregister the
        listening descriptors first (no new accepts), let the pending tasks run (each yield
        runs everything scheduled before it: one builds the transports, the next runs
        ``connection_made``), and only then close the servers."""
        loop = asyncio.get_running_loop()
        for listener in self.listeners:
            with contextlib.suppress(ValueError, OSError):  # not a selector loop's reader
                loop.remove_reader(listener.fileno())
        for _ in range(3):
            await asyncio.sleep(0)

    def _take_accept_queue(self) -> list[socket.socket]:
        taken: list[socket.socket] = []
        for listener in self.listeners:
            while True:
                try:
                    conn, _ = listener.accept()
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:  # EMFILE and friends: what stays queued is the OS's
                    log.warning("could not accept queued connections: %s", exc)
                    break
                conn.setblocking(False)
                taken.append(conn)
        return taken

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        loop = asyncio.get_running_loop()
        # Counted from the signal, not from now: a handler that blocked the loop delays this.
        started = loop.time() - self.deadline.since_signal()
        deadline = started + self.options.grace
        hard_deadline = deadline + self.deadline.margin
        self.drain.begin()
        notify("STOPPING=1")
        # 1-2. stop accepting, take what is queued, then close our descriptors (never
        # shutdown(): see listeners). On a socket shared with siblings the queue is theirs to
        # serve: a connection taken now would meet a process on its way out.
        await self._stop_accepting()
        queued = [] if self.options.shared else self._take_accept_queue()
        for server in self.servers:
            server.close()
        for listener in self.listeners:
            listener.close()
        factory = self._protocol_factory()
        for conn in queued:
            await loop.connect_accepted_socket(factory, conn, ssl=self.config.ssl)
        state = self.server_state
        log.info("draining: %d connection(s), %d request(s) in flight, %d taken from the "
                 "accept queue", len(state.connections), len(state.tasks), len(queued))
        # 3. ask every connection to finish, and wait for them
        for connection in list(state.connections):
            connection.shutdown()
        while (state.connections or state.tasks) and loop.time() < deadline:
            if self.stop.immediate.is_set():
                break
            await asyncio.sleep(0.01)
        # 4. past the grace: cancel and close what remains. A request whose work may go on
        # after the cancel (a WSGI thread) or be half done (not idempotent) gets no answer at
        # all: its connection is closed first, so the 503 "retry" below is never sent for it
        # (a client that retried as told would place the order twice).
        cut = len(state.tasks)
        if state.tasks or state.connections:
            log.warning("grace period over: cancelling %d request(s), closing %d connection(s)",
                        cut, len(state.connections))
            for connection in list(state.connections):
                if _no_retry(connection, wsgi=self.options.wsgi):
                    connection.transport.close()
            for task in list(state.tasks):
                task.cancel()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*state.tasks, return_exceptions=True), 0.3)
            for connection in list(state.connections):
                connection.transport.close()
            await asyncio.sleep(0)
        if not self.stop.immediate.is_set():
            try:
                await asyncio.wait_for(self.lifespan.shutdown(),
                                       max(0.1, hard_deadline - 0.2 - loop.time()))
            except TimeoutError:
                log.warning("lifespan shutdown did not finish in time")
        log.info("stopped %.3f s after the signal (%d request(s) cut at the grace period)",
                 loop.time() - started, cut)


def _still_running(server: CrashonlyServer) -> str:
    threads = [t.name for t in threading.enumerate()
               if not t.daemon and t is not threading.main_thread()]
    return (f"{len(server.server_state.tasks)} request(s), "
            f"{len(threads)} thread(s) ({', '.join(threads) or 'none'})")


def serve(app: ASGIApp, listeners: list[socket.socket], options: ServeOptions,
          *, http: str = "auto", stop: Shutdown | None = None) -> int:
    """Serve ``app`` (ASGI 3) on ``listeners`` until a signal; return the exit code."""
    drain = Drain()
    front = guard(FrontDoor(app, drain, livez=options.livez, readyz=options.readyz),
                  options.limits)
    config = uvicorn.Config(
        front, lifespan="auto",
        # any factory does: uvicorn calls it with the protocol class's keyword arguments
        http=limit_connections(_protocol_class(http),  # type: ignore[arg-type]
                               options.limits.connection_cap()), log_config=None,
        access_log=options.access_log, timeout_keep_alive=options.keep_alive,
        root_path=options.root_path, proxy_headers=options.proxy_headers,
        forwarded_allow_ips=options.forwarded_allow_ips, timeout_graceful_shutdown=None,
    )
    config._co_drain = drain  # type: ignore[attr-defined]  # read by the protocol hooks
    config._co_header_timeout = options.header_timeout  # type: ignore[attr-defined]
    config._co_idle_linger = options.idle_linger  # type: ignore[attr-defined]
    stop = stop or Shutdown()
    stop.install()
    deadline = HardDeadline(stop, options.grace, running=lambda: _still_running(server))
    server = CrashonlyServer(config, listeners=listeners, options=options, drain=drain, stop=stop,
                             deadline=deadline.start())
    try:
        server.run(sockets=listeners)
    except SystemExit as exc:  # uvicorn exits this way when the lifespan startup fails
        return exc.code if isinstance(exc.code, int) else 3
    finally:
        stop.restore()
    return 0 if server.started else 3
