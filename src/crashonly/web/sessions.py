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
commas sign with the first and accept all (rotate keys without logging everyone out). Each key
has at least :data:`MIN_KEY_LENGTH` characters. With neither, a server that only loopback
clients can reach (``crashonly web`` decides, see :func:`use_stored_key`) keeps one random key
in the session store itself, created once and atomically, so every web process of the
formation, and every restart, signs with the same key.

Session I/O runs on :data:`SESSION_THREADS` threads of its own and waits at most
:data:`SESSION_WAIT` seconds, so a slow or hung store answers 503 to the requests that need a
session and holds up no other request. A cookie sent many times costs one store lookup.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, TypeVar

from ..errors import ConfigError, CrashonlyError, SerializationError
from .limits import LogThrottle
from .stores import SessionStore, SessionStoreError, check_url, default_store_url, open_store

__all__ = [
    "KEY_HINT",
    "MIN_KEY_LENGTH",
    "SECRET_ENV",
    "SESSION_THREADS",
    "SESSION_WAIT",
    "Session",
    "SessionConfig",
    "SessionManager",
    "SessionMiddleware",
    "SessionTooLarge",
    "parse_keys",
    "use_stored_key",
]

SECRET_ENV = "CRASHONLY_SECRET_KEY"
MIN_KEY_LENGTH = 32
KEY_HINT = 'generate one with: python -c "import secrets; print(secrets.token_urlsafe(32))"'
SESSION_THREADS = 8
SESSION_WAIT = 2.0
_MAX_LOOKUPS = 2  # distinct, correctly signed cookie values looked up per request
_KEY_REFRESH = 5.0  # a stored key is re-read at most this often (a cookie it does not verify)
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{43}$")

log = logging.getLogger("crashonly.web.sessions")
_store_errors = LogThrottle(log, every=10.0)
_stored_key = threading.Event()


def use_stored_key(enabled: bool = True) -> None:
    """Let sessions without a configured key keep theirs in the session store. ``crashonly
    web`` calls this when every listening socket is a loopback TCP address: no one else can
    reach the server, so no one else can read or forge what the key protects."""
    if enabled:
        _stored_key.set()
    else:
        _stored_key.clear()


def parse_keys(secret: str, where: str) -> list[str]:
    """The comma-separated keys of ``secret``; a :class:`ConfigError` naming ``where`` (never
    the key) if one is shorter than :data:`MIN_KEY_LENGTH`."""
    keys = [k.strip() for k in secret.split(",") if k.strip()]
    for key in keys:
        if len(key) < MIN_KEY_LENGTH:
            raise ConfigError(f"{where} holds a key of {len(key)} characters; a key needs at "
                              f"least {MIN_KEY_LENGTH}: {KEY_HINT}")
    return keys


def _derive(key: str) -> bytes:
    return hashlib.sha256(b"crashonly.session\0" + key.encode()).digest()

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
T = TypeVar("T")


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
        given = secret_key if secret_key else os.environ.get(SECRET_ENV, "")
        where = "secret_key=" if secret_key else f"${SECRET_ENV}"
        keys = parse_keys(given, where)
        self._keys: list[bytes] | None = [_derive(k) for k in keys] or None
        self.stored_key = not keys
        if self.stored_key and not _stored_key.is_set():
            raise ConfigError(f"sessions need a secret key: set {SECRET_ENV} (the same in every "
                              f"web process) or pass secret_key=; {KEY_HINT}")
        self._key_lock = threading.Lock()
        self._key_read = 0.0
        self.config = config or SessionConfig()
        if self.config.idle_timeout <= 0 or self.config.max_age <= 0:
            raise ConfigError("idle_timeout and max_age must be positive numbers of seconds")
        self.clock = clock
        if store is None:
            store = default_store_url()
        if isinstance(store, str):
            check_url(store)
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
    def _signing_keys(self) -> list[bytes]:
        keys = self._keys
        if keys is None:  # kept in the store: read (or created) on first use
            with self._key_lock:
                if self._keys is None:
                    self._keys = [_derive(self.store.secret())]
                    self._key_read = time.monotonic()
                keys = self._keys
        return keys

    def _reread_key(self) -> bool:
        """A stored key may have been replaced (memcached evicted it, someone deleted it): read
        it again, at most every few seconds, and accept both. True if it changed."""
        if not self.stored_key or time.monotonic() - self._key_read < _KEY_REFRESH:
            return False
        with self._key_lock:
            self._key_read = time.monotonic()
            fresh = _derive(self.store.secret())
            keys = self._keys or []
            if fresh in keys:
                return False
            self._keys = [fresh, *keys][:4]
            return True

    def sign(self, sid: str) -> str:
        key = self._signing_keys()[0]
        return f"{sid}.{_b64(hmac.new(key, sid.encode(), hashlib.sha256).digest())}"

    def unsign(self, value: str) -> str | None:
        """The id in a cookie value, or None if it is malformed or its signature is wrong."""
        sid, dot, signature = value.partition(".")
        if not dot or not _TOKEN.match(sid) or not _TOKEN.match(signature):
            return None
        if self._verify(sid, signature) or (self._reread_key() and self._verify(sid, signature)):
            return sid
        return None

    def _verify(self, sid: str, signature: str) -> bool:
        for key in self._signing_keys():
            expected = _b64(hmac.new(key, sid.encode(), hashlib.sha256).digest())
            if hmac.compare_digest(expected, signature):
                return True
        return False

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
        looked: set[str] = set()
        for value in dict.fromkeys(values):  # the same cookie sent 700 times: one lookup
            sid = self.unsign(value)
            if sid is None or sid in looked:
                continue
            if len(looked) == _MAX_LOOKUPS:
                break
            looked.add(sid)
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
        old = session._sid
        if old is None or session._rotate:
            sid = secrets.token_urlsafe(32)
            if not self.store.save(sid, record, ttl, new=True):
                raise SessionStoreError("the session store refused a new session id")
            if old is not None:  # after the save: a failed save keeps the session
                self.store.delete(old)
        else:
            sid = old
            if not self.store.save(sid, record, ttl, new=False):
                # Ended meanwhile by another request (logout, rotation) or expired: saving
                # must not bring it back. This request's changes go with it.
                session._original = encoded
                return None
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
        self._io = _SessionIO()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        manager, run = self.manager, self._io.run
        cookie = b"; ".join(v for k, v in scope["headers"] if k == b"cookie").decode("latin-1")
        try:
            session = await run(lambda: manager.open(cookie)) if cookie else Session()
        except SessionStoreError as exc:
            store_failed(exc)
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
                    cookie = await run(lambda: manager.commit(session, https=https))
                except SessionTooLarge:
                    replaced = True
                    await _plain(send, 413, b"session data too large\n", [])
                    return
                except SessionStoreError as exc:
                    store_failed(exc)
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


def store_failed(exc: SessionStoreError) -> None:
    """Log a store failure, at most one line every 10 s (with how many were not logged)."""
    _store_errors.warning("session store unavailable, answering 503: %s", exc)


class _SessionIO:
    """Session I/O on :data:`SESSION_THREADS` threads of its own, not on the thread pool the
    app's own blocking calls share: a hung store then stalls only requests with a session,
    and those get 503 after :data:`SESSION_WAIT` seconds rather than queueing forever."""

    def __init__(self) -> None:
        self._limiter: Any = None

    async def run(self, fn: Callable[[], T]) -> T:
        from anyio import CapacityLimiter, fail_after
        from anyio.to_thread import run_sync

        if self._limiter is None:  # made in the event loop, which anyio needs
            self._limiter = CapacityLimiter(SESSION_THREADS)
        try:
            with fail_after(SESSION_WAIT):
                return await run_sync(fn, limiter=self._limiter)
        except TimeoutError:
            raise SessionStoreError(f"session store: no answer within {SESSION_WAIT:g} s"
                                    ) from None
