"""Where session data lives: a backing service with expiry, never the web process (P5).

A store keeps opaque bytes under a session id for a number of seconds. It is synchronous (the
drivers are); the ASGI middleware calls it from its own worker threads, the WSGI one directly.

=========================  ==============================================================
URL                        store
=========================  ==============================================================
``redis://…``              :class:`RedisStore`: ``SET … PX`` (Redis expires the key)
``memcached://host:port``  :class:`MemcachedStore`: items with an expiry time
``sqlite:///path.db``      :class:`SQLStore`: an ``expires_at`` column, checked on read and
``postgresql://…``         purged now and then by any process
=========================  ==============================================================

Writes are conditional: a new session is created only if its id is free, an existing one is
updated only while it still exists. So a request that loaded a session before a concurrent
logout (or rotation) deleted it cannot bring it back by saving it afterwards.

A store also keeps the formation's session key when none is configured (:meth:`secret`):
created once, atomically (``SET NX``, memcached ``add``, ``INSERT … ON CONFLICT DO NOTHING``),
so web processes starting together agree on it.

Every call is short: 1 s socket timeouts (Redis, Memcached), 2 s to get a connection or a lock
(SQL). Once a call fails because the service is unreachable or hung, the store is *known down*
for :data:`DOWN_FOR` seconds: calls fail at once, without I/O, and then one call probes again.
Errors of the service become :class:`SessionStoreError` (the middleware answers 503, never 500).

::

    BackendError
    └── SessionStoreError      the session store cannot be reached or failed
"""

from __future__ import annotations

import math
import os
import random
import secrets
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar

from ..errors import BackendError, ConfigError

__all__ = [
    "DOWN_FOR",
    "MemcachedStore",
    "RedisStore",
    "SQLStore",
    "SessionStore",
    "SessionStoreError",
    "check_url",
    "default_store_url",
    "open_store",
    "sessions_beside",
]

T = TypeVar("T")

DOWN_FOR = 1.0
"""Seconds a store that failed to answer is treated as down (calls fail at once), before one
call probes it again."""

_TIMEOUT = 1.0  # Redis and Memcached socket and connect timeouts
_SQL_WAIT = 2.0  # SQL: waiting for a pooled connection (PostgreSQL) or a lock (SQLite)


class SessionStoreError(BackendError):
    """The session store cannot be reached or failed an operation."""


class SessionStore(Protocol):
    """Opaque bytes under an id, each with its own time to live."""

    def load(self, sid: str) -> bytes | None: ...

    def save(self, sid: str, data: bytes, ttl: float, *, new: bool) -> bool:
        """Store ``data`` under ``sid`` for ``ttl`` seconds. ``new``: only if no session has
        that id; otherwise only if the session still exists (not deleted, not expired).
        Returns whether it was stored."""
        ...

    def delete(self, sid: str) -> None: ...

    def secret(self) -> str:
        """The session key shared through this store, created (atomically) on first use."""
        ...

    def close(self) -> None: ...


def sessions_beside(database_url: str) -> str:
    """Where sessions go when the queue's database is the only store named: PostgreSQL, a table
    of that database; SQLite, a file of their own beside the queue's (``shop.db`` →
    ``shop.sessions.db``), so a long write transaction on the queue (a stopped transactional
    job holds SQLite's one write lock) never blocks a login."""
    scheme = urllib.parse.urlsplit(database_url).scheme if "://" in database_url else ""
    if scheme != "sqlite":
        return database_url
    parts = urllib.parse.urlsplit(database_url)
    path = urllib.parse.unquote(parts.path)
    if path in ("/:memory:", "/"):
        return database_url
    stem, dot, suffix = path.rpartition(".")
    if not dot or "/" in suffix:
        stem, suffix = path, "db"
    return "sqlite://" + urllib.parse.quote(f"{stem}.sessions.{suffix}")


def default_store_url(environ: dict[str, str] | None = None) -> str:
    """``$SESSION_URL``, else ``$REDIS_URL``, else ``$MEMCACHED_URL``, else beside the queue's
    database (``$DATABASE_URL``, else ``sqlite:///crashonly.db`` like :class:`crashonly.App`;
    see :func:`sessions_beside`)."""
    env = os.environ if environ is None else environ
    for name in ("SESSION_URL", "REDIS_URL", "MEMCACHED_URL"):
        if env.get(name):
            return env[name]
    return sessions_beside(env.get("DATABASE_URL") or "sqlite:///crashonly.db")


def check_url(url: str) -> type[RedisStore | MemcachedStore | SQLStore]:
    """The store class for ``url``, or a :class:`ConfigError`; no I/O, so a malformed URL is
    reported when the app starts, not at its first request."""
    scheme = urllib.parse.urlsplit(url).scheme if "://" in url else ""
    if scheme in ("redis", "rediss", "unix"):
        return RedisStore
    if scheme in ("memcached", "memcache"):
        return MemcachedStore
    if scheme == "sqlite":
        from ..backends.sqlite import parse_url

        parse_url(url)
    if scheme in ("sqlite", "postgres", "postgresql"):
        return SQLStore
    raise ConfigError(f"unsupported session store URL {_redact(url)!r}; expected redis://, "
                      "memcached://host:port, sqlite:///path.db or postgresql://")


def open_store(url: str) -> SessionStore:
    """The store for ``url``; only that store's driver is imported."""
    return check_url(url)(url)


def _redact(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url


def _libpq_url(url: str) -> str:
    """The queue's URLs may name a ``schema``; libpq knows it as a ``search_path``."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query)
    schema = [v for k, v in query if k == "schema"]
    if not schema:
        return url
    query = [(k, v) for k, v in query if k not in ("schema", "options")]
    query.append(("options", f"-c search_path={schema[0]}"))
    encoded = urllib.parse.urlencode(query, quote_via=urllib.parse.quote)  # %20, not +
    return urllib.parse.urlunsplit(parts._replace(query=encoded))


def _driver(name: str, extra: str) -> Any:
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        raise ConfigError(f"this session store needs {name}: pip install 'crashonly[{extra}]'"
                          ) from None


class _Breaker:
    """Remembers that a store is down, so that calls fail at once instead of each waiting for
    its own timeout (with a hung store, that wait is what exhausts a server's threads). After
    :data:`DOWN_FOR` seconds one call is let through to probe; the others still fail fast."""

    def __init__(self, where: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.where = where
        self.clock = clock
        self._lock = threading.Lock()
        self._down_until = 0.0
        self._reason = ""

    def check(self) -> None:
        with self._lock:
            if not self._down_until:
                return
            now = self.clock()
            if now < self._down_until:
                raise SessionStoreError(f"session store {self.where} is down ({self._reason})")
            self._down_until = now + DOWN_FOR  # this call probes; the others wait for it

    def failed(self, exc: BaseException) -> None:
        with self._lock:
            self._down_until = self.clock() + DOWN_FOR
            self._reason = str(exc)[:200] or type(exc).__name__

    def succeeded(self) -> None:
        if self._down_until:
            with self._lock:
                self._down_until = 0.0

    def call(self, fn: Callable[[], T], errors: tuple[type[BaseException], ...],
             down: tuple[type[BaseException], ...]) -> T:
        """``fn()``, its driver ``errors`` as :class:`SessionStoreError`; the ``down`` ones
        (unreachable, timed out) mark the store down."""
        self.check()
        try:
            result = fn()
        except down as exc:
            self.failed(exc)
            raise SessionStoreError(f"session store {self.where}: {exc}") from exc
        except errors as exc:
            raise SessionStoreError(f"session store {self.where}: {exc}") from exc
        self.succeeded()
        return result


def _new_secret() -> str:
    return secrets.token_urlsafe(32)


class _KeyValueStore:
    """What the Redis and Memcached stores share: a client with ``get``, key prefixes, and
    driver errors translated into :class:`SessionStoreError` naming the store."""

    prefix: str
    secret_key: str
    where: str
    client: Any
    _errors: tuple[type[BaseException], ...]
    _down: tuple[type[BaseException], ...]
    _breaker: _Breaker

    def _call(self, fn: Callable[[], T]) -> T:
        return self._breaker.call(fn, self._errors, self._down)

    def load(self, sid: str) -> bytes | None:
        value = self._call(lambda: self.client.get(self.prefix + sid))
        return bytes(value) if value is not None else None

    def _create_secret(self, value: str) -> None:
        raise NotImplementedError

    def secret(self) -> str:
        self._create_secret(_new_secret())  # a no-op when one exists: the first one wins
        value = self._call(lambda: self.client.get(self.secret_key))
        if value is None:
            raise SessionStoreError(f"session store {self.where} lost the session key")
        return bytes(value).decode()

    def close(self) -> None:
        self.client.close()


class RedisStore(_KeyValueStore):
    prefix = "crashonly:session:"
    secret_key = "crashonly:secret-key"

    def __init__(self, url: str) -> None:
        redis = _driver("redis", "redis")
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self._down: tuple[type[BaseException], ...] = (
            redis.ConnectionError, redis.TimeoutError, OSError)
        self.client = redis.Redis.from_url(url, socket_timeout=_TIMEOUT,
                                           socket_connect_timeout=_TIMEOUT,
                                           health_check_interval=30)
        self.where = _redact(url)
        self._breaker = _Breaker(self.where)

    def save(self, sid: str, data: bytes, ttl: float, *, new: bool) -> bool:
        ms = max(1, int(ttl * 1000))
        return bool(self._call(lambda: self.client.set(self.prefix + sid, data, px=ms,
                                                       nx=new, xx=not new)))

    def delete(self, sid: str) -> None:
        self._call(lambda: self.client.delete(self.prefix + sid))

    def _create_secret(self, value: str) -> None:
        self._call(lambda: self.client.set(self.secret_key, value, nx=True))


class MemcachedStore(_KeyValueStore):
    """Memcached may evict any item, the key included: a new key is then made, and sessions
    signed with the old one end (they were likely evicted too)."""

    prefix = "crashonly-session-"
    secret_key = "crashonly-secret-key"
    _RELATIVE_LIMIT = 30 * 86400  # memcached reads larger expiry values as a unix time

    def __init__(self, url: str) -> None:
        base = _driver("pymemcache.client.base", "memcached")
        parts = urllib.parse.urlsplit(url)
        self.where = _redact(url)
        self.client = base.PooledClient((parts.hostname or "127.0.0.1", parts.port or 11211),
                                        connect_timeout=_TIMEOUT, timeout=_TIMEOUT,
                                        max_pool_size=16)
        errors = _driver("pymemcache.exceptions", "memcached")
        self._errors: tuple[type[BaseException], ...] = (errors.MemcacheError, OSError)
        self._down: tuple[type[BaseException], ...] = (
            errors.MemcacheUnexpectedCloseError, OSError)
        self._breaker = _Breaker(self.where)

    def save(self, sid: str, data: bytes, ttl: float, *, new: bool) -> bool:
        expire = max(1, math.ceil(ttl))
        if expire > self._RELATIVE_LIMIT:
            expire = int(time.time()) + expire
        write = self.client.add if new else self.client.replace
        return bool(self._call(lambda: write(self.prefix + sid, data, expire=expire,
                                             noreply=False)))

    def delete(self, sid: str) -> None:
        self._call(lambda: self.client.delete(self.prefix + sid, noreply=False))

    def _create_secret(self, value: str) -> None:
        self._call(lambda: self.client.add(self.secret_key, value, expire=0, noreply=False))


class SQLStore:
    """Sessions in a table, expired by an ``expires_at`` column.

    Expired rows are invisible at once (every read checks the column) and deleted by
    :meth:`purge`, which any process runs on about one save in :attr:`purge_every`, so no
    separate cleaner process is needed. An SQLite file this store creates is readable by its
    owner only (0600); the session key is never kept in a file others can read.
    """

    table = "crashonly_sessions"
    secrets_table = "crashonly_secrets"
    purge_every = 200

    def __init__(self, url: str, *, clock: Callable[[], float] = time.time) -> None:
        self.url = url
        self.where = _redact(url)
        self.clock = clock
        self._breaker = _Breaker(self.where)
        scheme = urllib.parse.urlsplit(url).scheme
        self.postgres = scheme in ("postgres", "postgresql")
        self._local = threading.local()
        self._pool: Any = None
        binary = "BLOB"
        if self.postgres:
            psycopg_pool = _driver("psycopg_pool", "postgres")
            self._psycopg = _driver("psycopg", "postgres")
            self._pool = psycopg_pool.ConnectionPool(
                _libpq_url(url), min_size=1, max_size=8, timeout=_SQL_WAIT,
                kwargs={"autocommit": True, "connect_timeout": 2}, open=False)
            try:
                self._pool.open(wait=True, timeout=5)
            except Exception as exc:
                raise SessionStoreError(f"session store {self.where}: {exc}") from exc
            self._errors: tuple[type[BaseException], ...] = (
                self._psycopg.Error, psycopg_pool.PoolTimeout)
            self._down: tuple[type[BaseException], ...] = (
                self._psycopg.OperationalError, psycopg_pool.PoolTimeout)
            p = "%s"
            binary = "BYTEA"
        else:
            from ..backends.sqlite import parse_url

            self.path = parse_url(url)[0]
            self._create_private(self.path)
            self._errors = (sqlite3.Error,)
            self._down = (sqlite3.OperationalError,)
            p = "?"
        t, now = self.table, f"expires_at > {p}"
        self._q = {
            "load": f"SELECT data FROM {t} WHERE id = {p} AND {now}",
            "create": f"INSERT INTO {t} (id, data, expires_at) VALUES ({p}, {p}, {p}) "
                      "ON CONFLICT (id) DO NOTHING",
            "update": f"UPDATE {t} SET data = {p}, expires_at = {p} WHERE id = {p} AND {now}",
            "delete": f"DELETE FROM {t} WHERE id = {p}",
            "purge": f"DELETE FROM {t} WHERE expires_at <= {p}",
            "secret_create": f"INSERT INTO {self.secrets_table} (name, value) VALUES ({p}, {p}) "
                             "ON CONFLICT (name) DO NOTHING",
            "secret": f"SELECT value FROM {self.secrets_table} WHERE name = {p}",
        }
        schema = [
            f"CREATE TABLE IF NOT EXISTS {t} (id TEXT PRIMARY KEY, data {binary} NOT NULL, "
            f"expires_at {'DOUBLE PRECISION' if self.postgres else 'REAL'} NOT NULL)",
            f"CREATE INDEX IF NOT EXISTS {t}_expires ON {t} (expires_at)",
            f"CREATE TABLE IF NOT EXISTS {self.secrets_table} (name TEXT PRIMARY KEY, "
            "value TEXT NOT NULL)",
        ]
        for attempt in range(3):
            try:
                with self._cursor() as cur:
                    for statement in schema:
                        cur.execute(statement)
                break
            except SessionStoreError:
                # PostgreSQL: two processes creating the same table at once collide on its
                # type's name even with IF NOT EXISTS; the second try finds it there.
                if attempt == 2:
                    raise
                self._breaker.succeeded()
                time.sleep(0.05)

    @staticmethod
    def _create_private(path: str) -> None:
        if path == ":memory:" or os.path.exists(path):
            return
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            pass  # another process made it first
        except OSError as exc:
            raise ConfigError(f"cannot create the session database {path}: {exc.strerror}"
                              ) from None

    def _sqlite(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            # one connection per thread; autocommit: each statement is its own transaction
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=_SQL_WAIT,
                                   check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {int(_SQL_WAIT * 1000)}")
            if self.path != ":memory:":
                conn.execute("PRAGMA journal_mode = WAL")
            self._local.conn = conn
        return conn

    @contextmanager
    def _cursor(self) -> Iterator[Any]:
        self._breaker.check()
        try:
            if self.postgres:
                with self._pool.connection() as conn:
                    yield conn.cursor()
            else:
                yield self._sqlite().cursor()
        except self._down as exc:
            self._breaker.failed(exc)
            raise SessionStoreError(f"session store {self.where}: {exc}") from exc
        except self._errors as exc:
            raise SessionStoreError(f"session store {self.where}: {exc}") from exc
        self._breaker.succeeded()

    def load(self, sid: str) -> bytes | None:
        with self._cursor() as cur:
            cur.execute(self._q["load"], (sid, self.clock()))
            row = cur.fetchone()
        return bytes(row[0]) if row is not None else None

    def save(self, sid: str, data: bytes, ttl: float, *, new: bool) -> bool:
        now = self.clock()
        with self._cursor() as cur:
            if new:
                cur.execute(self._q["create"], (sid, data, now + ttl))
            else:
                cur.execute(self._q["update"], (data, now + ttl, sid, now))
            stored = bool(cur.rowcount == 1)
        if random.randrange(self.purge_every) == 0:
            self.purge()
        return stored

    def delete(self, sid: str) -> None:
        with self._cursor() as cur:
            cur.execute(self._q["delete"], (sid,))

    def secret(self) -> str:
        if not self.postgres and self.path != ":memory:":
            mode = os.stat(self.path).st_mode
            if mode & 0o077:
                raise SessionStoreError(
                    f"session store {self.where}: the file is readable by other users "
                    f"(mode {mode & 0o777:o}), so it cannot keep the session key: "
                    f"chmod 600 {self.path}, or set CRASHONLY_SECRET_KEY")
        with self._cursor() as cur:
            cur.execute(self._q["secret_create"], ("session", _new_secret()))
            cur.execute(self._q["secret"], ("session",))
            row = cur.fetchone()
        return str(row[0])

    def purge(self) -> int:
        """Delete expired sessions; returns how many."""
        with self._cursor() as cur:
            cur.execute(self._q["purge"], (self.clock(),))
            return int(cur.rowcount)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
