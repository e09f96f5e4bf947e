"""Sessions that live in a backing service, so any web process can serve any request (P5).

The cookie holds only a random id (256 bits) and its HMAC-SHA256 signature; the data lives in a
:mod:`~crashonly.web.stores` store with a time to live. A session ends ``idle_timeout`` seconds
after it was last used or ``max_age`` seconds after it was created, whichever comes first; the
store forgets it then too. The cookie is ``HttpOnly``, ``SameSite=Lax``, and ``Secure`` when
the request came over HTTPS.

* A forged, malformed or expired cookie is ignored: the request gets a fresh, empty session
  (and the stale cookie is deleted), never an error.
* :meth:`Session.rotate` gives the session a new id and keeps the data: call it on login, so
  an id planted before login (session fixation) is worth nothing after.
* An emptied session is deleted from the store and its cookie removed: ``session.clear()`` is
  logout.
* Data is JSON. Changes are found by comparing the encoding at the end of the request with the
  one loaded, so nested changes (``session["cart"].append(…)``) are saved too; a session that
  was only read is written back only to push its idle expiry (at most every tenth of
  ``idle_timeout``).
* Saved when the response starts (the cookie is a header); a session encoding larger than
  ``max_size`` is not saved and the response becomes ``413``; a store that is down gives
  ``503`` with ``Retry-After``, never a 500.

The secret comes from ``secret_key=`` or ``$CRASHONLY_SECRET_KEY``; several keys separated by
commas sign with the first and accept all (rotate keys without logging everyone out).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError, CrashonlyError, SerializationError
from .stores import SessionStore, SessionStoreError, default_store_url, open_store

__all__ = [
    "SECRET_ENV",
    "Session",
    "SessionConfig",
    "SessionManager",
    "SessionMiddleware",
    "SessionTooLarge",
]

SECRET_ENV = "CRASHONLY_SECRET_KEY"
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{43}$")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class SessionTooLarge(CrashonlyError):
    """The session's data, encoded, is larger than the configured ``max_size``."""


IDLE_TIMEOUT = 2 * 3600.0
MAX_AGE = 14 * 86400.0
MAX_SIZE = 64 * 1024


@dataclass(frozen=True, kw_only=True, slots=True)
class SessionConfig:
    cookie_name: str = "session"
    idle_timeout: float = IDLE_TIMEOUT
    max_age: float = MAX_AGE
    max_size: int = MAX_SIZE
    path: str = "/"
    domain: str | None = None
    secure: bool | None = None  # None: when the request came over HTTPS
    same_site: str = "Lax"


class Session(dict[str, Any]):
    """A dict of JSON values, plus its id and :meth:`rotate`."""

    __slots__ = ("_cookie_seen", "_created", "_original", "_rotate", "_sid", "_touched")

    def __init__(self, data: dict[str, Any] | None = None, *, sid: str | None = None,
                 created: float = 0.0, touched: float = 0.0, cookie_seen: bool = False) -> None:
        super().__init__(data or {})
        self._sid = sid
        self._created = created
        self._touched = touched
        self._cookie_seen = cookie_seen
        self._rotate = False
        self._original = _encode_data(self) if data else ""

    @property
    def id(self) -> str | None:
        """The session's id; None until a new session is first saved."""
        return self._sid

    @property
    def is_new(self) -> bool:
        return self._sid is None

    def rotate(self) -> None:
        """Give the session a new id when saved, keeping its data; the old id stops working."""
        self._rotate = True

    def __repr__(self) -> str:  # never print an id that is a credential
        return f"<Session {len(self)} key(s){' new' if self.is_new else ''}>"


def _encode_data(data: dict[str, Any]) -> str:
    try:
        return json.dumps(data, separators=(",", ":"), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise SerializationError(f"session data must be JSON: {exc}") from exc


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class SessionManager:
    """Opening and committing sessions; shared by the ASGI and WSGI middleware. Synchronous:
    the store's driver is."""

    def __init__(self, *, store: SessionStore | str | None = None,
                 secret_key: str | None = None, config: SessionConfig | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        secret = secret_key or os.environ.get(SECRET_ENV, "")
        keys = [k.strip() for k in secret.split(",") if k.strip()]
        if not keys:
            raise ConfigError(
                f"sessions need a secret key: set {SECRET_ENV} (the same in every web "
                "process), or pass secret_key=")
        self._keys = [hashlib.sha256(b"crashonly.session\0" + k.encode()).digest() for k in keys]
        self.config = config or SessionConfig()
        if self.config.idle_timeout <= 0 or self.config.max_age <= 0:
            raise ConfigError("idle_timeout and max_age must be positive numbers of seconds")
        self.clock = clock
        self._store_spec = store
        self._store: SessionStore | None = store if not isinstance(store, str | None) else None
        self._lock = threading.Lock()

    @property
    def store(self) -> SessionStore:
        if self._store is None:
            with self._lock:
                if self._store is None:
                    spec = self._store_spec
                    self._store = open_store(spec if isinstance(spec, str) else
                                             default_store_url())
        return self._store

    # --- the cookie ---------------------------------------------------------------------
    def sign(self, sid: str) -> str:
        return f"{sid}.{_b64(hmac.new(self._keys[0], sid.encode(), hashlib.sha256).digest())}"

    def unsign(self, value: str) -> str | None:
        """The id in a cookie value, or None if it is malformed or its signature is wrong."""
        sid, dot, signature = value.partition(".")
        if not dot or not _TOKEN.match(sid) or not _TOKEN.match(signature):
            return None
        for key in self._keys:
            expected = _b64(hmac.new(key, sid.encode(), hashlib.sha256).digest())
            if hmac.compare_digest(expected, signature):
                return sid
        return None

    def _cookie_values(self, header: str | None) -> list[str]:
        if not header:
            return []
        name = self.config.cookie_name
        values = []
        for part in header.split(";"):
            key, eq, value = part.strip().partition("=")
            if eq and key == name:
                values.append(value.strip().strip('"'))
        return values

    def set_cookie(self, value: str, max_age: int, *, https: bool) -> str:
        c = self.config
        parts = [f"{c.cookie_name}={value}", f"Path={c.path}", f"Max-Age={max_age}", "HttpOnly",
                 f"SameSite={c.same_site}"]
        if c.domain:
            parts.append(f"Domain={c.domain}")
        if c.secure or (c.secure is None and https):
            parts.append("Secure")
        if max_age == 0:
            parts.insert(3, "Expires=Thu, 01 Jan 1970 00:00:00 GMT")
        return "; ".join(parts)

    # --- the session --------------------------------------------------------------------
    def open(self, cookie_header: str | None) -> Session:
        """The session named by the request's cookie, or a new, empty one."""
        values = self._cookie_values(cookie_header)
        now = self.clock()
        for value in values:
            sid = self.unsign(value)
            if sid is None:
                continue
            raw = self.store.load(sid)
            record = self._decode(raw) if raw is not None else None
            if record is None:
                continue
            created, touched, data = record
            if now >= created + self.config.max_age or now >= touched + self.config.idle_timeout:
                self.store.delete(sid)
                continue
            return Session(data, sid=sid, created=created, touched=touched, cookie_seen=True)
        return Session(cookie_seen=bool(values))

    def _decode(self, raw: bytes) -> tuple[float, float, dict[str, Any]] | None:
        try:
            record = json.loads(raw)
            created, touched, data = float(record["c"]), float(record["t"]), record["d"]
        except (ValueError, KeyError, TypeError):
            return None  # not ours, or damaged: treated as no session
        return (created, touched, data) if isinstance(data, dict) else None

    def needs_commit(self, session: Session) -> bool:
        """False when committing would do nothing (no session, none asked for): no I/O."""
        return bool(session) or session._sid is not None or session._cookie_seen

    def commit(self, session: Session, *, https: bool) -> str | None:
        """Save, delete or refresh the session; the ``Set-Cookie`` value to send, if any.
        Raises :class:`SessionTooLarge` (nothing is saved) and :class:`SessionStoreError`."""
        now = self.clock()
        config = self.config
        if not session:
            if session._sid is not None:
                self.store.delete(session._sid)
            return self.set_cookie("", 0, https=https) if session._cookie_seen else None
        encoded = _encode_data(session)
        new_id = session._sid is None or session._rotate
        if session._sid is None:
            session._created = now
        stale = now - session._touched >= config.idle_timeout / 10
        if not (new_id or stale or encoded != session._original):
            return None
        record = f'{{"c":{session._created!r},"t":{now!r},"d":{encoded}}}'.encode()
        if len(record) > config.max_size:
            raise SessionTooLarge(f"session data is {len(record)} bytes encoded, more than the "
                                  f"{config.max_size} allowed")
        ttl = min(config.idle_timeout, session._created + config.max_age - now)
        sid = old = session._sid
        if sid is None or session._rotate:
            sid = secrets.token_urlsafe(32)
        self.store.save(sid, record, ttl)
        if old is not None and old != sid:  # after the save: a failed save keeps the session
            self.store.delete(old)
        session._sid = sid
        session._rotate = False
        session._touched = now
        session._original = encoded
        if new_id:
            return self.set_cookie(self.sign(sid),
                                   max(1, int(session._created + config.max_age - now)),
                                   https=https)
        return None


async def _plain(send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode()), *extra]})
    await send({"type": "http.response.body", "body": body})


class SessionMiddleware:
    """ASGI middleware: ``scope["session"]`` (Starlette's ``request.session``) is a
    :class:`Session` kept in a store. ``store`` is a store or its URL; None: see
    :func:`~crashonly.web.stores.default_store_url`."""

    def __init__(self, app: ASGIApp, *, store: SessionStore | str | None = None,
                 secret_key: str | None = None, cookie_name: str = "session",
                 idle_timeout: float = IDLE_TIMEOUT, max_age: float = MAX_AGE,
                 max_size: int = MAX_SIZE,
                 path: str = "/", domain: str | None = None, secure: bool | None = None,
                 same_site: str = "Lax") -> None:
        self.app = app
        self.manager = SessionManager(store=store, secret_key=secret_key, config=SessionConfig(
            cookie_name=cookie_name, idle_timeout=idle_timeout, max_age=max_age,
            max_size=max_size, path=path, domain=domain, secure=secure, same_site=same_site))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        from anyio.to_thread import run_sync

        manager = self.manager
        cookie = b"; ".join(v for k, v in scope["headers"] if k == b"cookie").decode("latin-1")
        try:
            session = await run_sync(manager.open, cookie) if cookie else Session()
        except SessionStoreError:
            await _plain(send, 503, b"session store unavailable, retry\n",
                         [(b"retry-after", b"1")])
            return
        scope["session"] = session
        https = scope.get("scheme") in ("https", "wss")
        replaced = False

        async def send_(message: Message) -> None:
            nonlocal replaced
            if replaced:
                return
            if message["type"] == "http.response.start" and manager.needs_commit(session):
                try:
                    cookie = await run_sync(lambda: manager.commit(session, https=https))
                except SessionTooLarge:
                    replaced = True
                    await _plain(send, 413, b"session data too large\n", [])
                    return
                except SessionStoreError:
                    replaced = True
                    await _plain(send, 503, b"session store unavailable, retry\n",
                                 [(b"retry-after", b"1")])
                    return
                if cookie is not None:
                    message = dict(message)
                    message["headers"] = [*message.get("headers", ()),
                                          (b"set-cookie", cookie.encode("latin-1"))]
            await send(message)

        await self.app(scope, receive, send_)
