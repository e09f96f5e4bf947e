"""Sessions for WSGI apps (Flask, Django-style): the same store and cookie as the ASGI one.

``app.wsgi_app = SessionMiddleware(app.wsgi_app)`` (Flask) or wrap Django's WSGI handler; the
view finds the :class:`~crashonly.web.sessions.Session` in ``environ["crashonly.session"]``
(see :func:`session_of`). Behaviour and arguments are those of the ASGI
:class:`crashonly.web.sessions.SessionMiddleware`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, TypeVar

from .sessions import (
    IDLE_TIMEOUT,
    MAX_AGE,
    MAX_SIZE,
    SESSION_THREADS,
    SESSION_WAIT,
    Session,
    SessionConfig,
    SessionManager,
    SessionTooLarge,
    store_failed,
)
from .stores import SessionStore, SessionStoreError

__all__ = ["ENVIRON_KEY", "SessionMiddleware", "session_of"]

ENVIRON_KEY = "crashonly.session"
T = TypeVar("T")

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
StartResponse = Callable[..., Callable[[bytes], object]]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def session_of(environ: dict[str, Any]) -> Session:
    """The request's session (the middleware must wrap the app)."""
    session = environ.get(ENVIRON_KEY)
    if not isinstance(session, Session):
        raise LookupError("no session: wrap the WSGI app in crashonly.web.wsgi.SessionMiddleware")
    return session


def _plain(start_response: StartResponse, status: str, body: bytes,
           extra: list[tuple[str, str]]) -> list[bytes]:
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                            ("Content-Length", str(len(body))), *extra])
    return [body]


class SessionMiddleware:
    def __init__(self, app: WSGIApp, *, store: SessionStore | str | None = None,
                 secret_key: str | None = None, cookie_name: str = "session",
                 idle_timeout: float = IDLE_TIMEOUT, max_age: float = MAX_AGE,
                 max_size: int = MAX_SIZE, path: str = "/", domain: str | None = None,
                 secure: bool | None = None, same_site: str = "Lax") -> None:
        self.app = app
        self.manager = SessionManager(store=store, secret_key=secret_key, config=SessionConfig(
            cookie_name=cookie_name, idle_timeout=idle_timeout, max_age=max_age,
            max_size=max_size, path=path, domain=domain, secure=secure, same_site=same_site))
        # At most SESSION_THREADS of the server's threads wait on the store at once; the
        # others answer 503 rather than join them, so a hung store cannot take every thread.
        self._gate = threading.BoundedSemaphore(SESSION_THREADS)

    def _io(self, fn: Callable[[], T]) -> T:
        if not self._gate.acquire(timeout=SESSION_WAIT):
            raise SessionStoreError(f"session store: busy for {SESSION_WAIT:g} s")
        try:
            return fn()
        finally:
            self._gate.release()

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        manager = self.manager
        cookie = environ.get("HTTP_COOKIE")
        try:
            session = self._io(lambda: manager.open(cookie)) if cookie else Session()
        except SessionStoreError as exc:
            store_failed(exc)
            return _plain(start_response, "503 Service Unavailable",
                          b"session store unavailable, retry\n", [("Retry-After", "1")])
        environ[ENVIRON_KEY] = session
        https = environ.get("wsgi.url_scheme") == "https"
        refusal: list[bytes] = []

        def start(status: str, headers: list[tuple[str, str]],
                  exc_info: ExcInfo | None = None) -> Callable[[bytes], object]:
            if manager.needs_commit(session) and exc_info is None:
                try:
                    set_cookie = self._io(lambda: manager.commit(session, https=https))
                except SessionTooLarge:
                    refusal[:] = _plain(start_response, "413 Content Too Large",
                                        b"session data too large\n", [])
                    return lambda _: None
                except SessionStoreError as exc:
                    store_failed(exc)
                    refusal[:] = _plain(start_response, "503 Service Unavailable",
                                        b"session store unavailable, retry\n",
                                        [("Retry-After", "1")])
                    return lambda _: None
                if set_cookie is not None:
                    headers = [*headers, ("Set-Cookie", set_cookie)]
            return start_response(status, headers, exc_info)

        result = self.app(environ, start)
        return _Body(result, refusal)


class _Body:
    """The app's body, unless the session refused it (413/503): then ours, and theirs closed.
    ``close`` is passed on, as PEP 3333 requires."""

    def __init__(self, result: Iterable[bytes], refusal: list[bytes]) -> None:
        self.result = result
        self.refusal = refusal

    def __iter__(self) -> Iterator[bytes]:
        iterator = iter(self.result)
        first = next(iterator, None)  # a lazy app calls start_response here at the latest
        if self.refusal:
            yield from self.refusal
            return
        if first is not None:
            yield first
            yield from iterator

    def close(self) -> None:
        close = getattr(self.result, "close", None)
        if close is not None:
            close()
