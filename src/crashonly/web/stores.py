"""Where session data lives: a backing service with expiry, never the web process (P5).

A store keeps opaque bytes under a session id for a number of seconds. It is synchronous (the
drivers are); the ASGI middleware calls it from a worker thread, the WSGI one directly.

=========================  ==============================================================
URL                        store
=========================  ==============================================================
``redis://…``              :class:`RedisStore`: ``SET … PX`` (Redis expires the key)
``memcached://host:port``  :class:`MemcachedStore`: items with an expiry time
``sqlite:///path.db``      :class:`SQLStore` in the queue's own database: an ``expires_at``
``postgresql://…``         column, checked on read and purged now and then by any process
=========================  ==============================================================

Errors of the service become :class:`SessionStoreError` (the middleware answers 503, never 500).

::

    BackendError
    └── SessionStoreError      the session store cannot be reached or failed
"""

from __future__ import annotations

import math
import os
import random
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar

from ..errors import BackendError, ConfigError

__all__ = [
    "MemcachedStore",
    "RedisStore",
    "SQLStore",
    "SessionStore",
    "SessionStoreError",
    "default_store_url",
    "open_store",
]

T = TypeVar("T")


class SessionStoreError(BackendError):
    """The session store cannot be reached or failed an operation."""


class SessionStore(Protocol):
    """Opaque bytes under an id, each with its own time to live."""

    def load(self, sid: str) -> bytes | None: ...
    def save(self, sid: str, data: bytes, ttl: float) -> None: ...
    def delete(self, sid: str) -> None: ...
    def close(self) -> None: ...


def default_store_url(environ: dict[str, str] | None = None) -> str:
    """``$SESSION_URL``, else ``$REDIS_URL``, else ``$MEMCACHED_URL``, else the queue's database
    (``$DATABASE_URL``, else ``sqlite:///crashonly.db`` like :class:`crashonly.App`)."""
    env = os.environ if environ is None else environ
    for name in ("SESSION_URL", "REDIS_URL", "MEMCACHED_URL", "DATABASE_URL"):
        if env.get(name):
            return env[name]
    return "sqlite:///crashonly.db"


def open_store(url: str) -> SessionStore:
    """The store for ``url``; only that store's driver is imported."""
    scheme = urllib.parse.urlsplit(url).scheme if "://" in url else ""
    if scheme in ("redis", "rediss", "unix"):
        return RedisStore(url)
    if scheme in ("memcached", "memcache"):
        return MemcachedStore(url)
    if scheme in ("sqlite", "postgres", "postgresql"):
        return SQLStore(url)
    raise ConfigError(f"unsupported session store URL {_redact(url)!r}; expected redis://, "
                      "memcached://host:port, sqlite:///path.db or postgresql://")


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


class _KeyValueStore:
    """What the Redis and Memcached stores share: a client with ``get``, key prefixes, and
    driver errors translated into :class:`SessionStoreError` naming the store."""

    prefix: str
    where: str
    client: Any
    _errors: tuple[type[BaseException], ...]

    def _call(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except self._errors as exc:
            raise SessionStoreError(f"session store {self.where}: {exc}") from exc

    def load(self, sid: str) -> bytes | None:
        value = self._call(lambda: self.client.get(self.prefix + sid))
        return bytes(value) if value is not None else None

    def close(self) -> None:
        self.client.close()


class RedisStore(_KeyValueStore):
    prefix = "crashonly:session:"

    def __init__(self, url: str) -> None:
        redis = _driver("redis", "redis")
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self.client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5,
                                           health_check_interval=30)
        self.where = _redact(url)


    def save(self, sid: str, data: bytes, ttl: float) -> None:
        ms = max(1, int(ttl * 1000))
        self._call(lambda: self.client.set(self.prefix + sid, data, px=ms))

    def delete(self, sid: str) -> None:
        self._call(lambda: self.client.delete(self.prefix + sid))


class MemcachedStore(_KeyValueStore):
    prefix = "crashonly-session-"
    _RELATIVE_LIMIT = 30 * 86400  # memcached reads larger expiry values as a unix time

    def __init__(self, url: str) -> None:
        base = _driver("pymemcache.client.base", "memcached")
        parts = urllib.parse.urlsplit(url)
        self.where = _redact(url)
        self.client = base.PooledClient((parts.hostname or "127.0.0.1", parts.port or 11211),
                                        connect_timeout=5, timeout=5, max_pool_size=16)
        errors = _driver("pymemcache.exceptions", "memcached")
        self._errors: tuple[type[BaseException], ...] = (errors.MemcacheError, OSError)


    def save(self, sid: str, data: bytes, ttl: float) -> None:
        expire = max(1, math.ceil(ttl))
        if expire > self._RELATIVE_LIMIT:
            expire = int(time.time()) + expire
        stored = self._call(lambda: self.client.set(self.prefix + sid, data, expire=expire,
                                                    noreply=False))
        if not stored:
            raise SessionStoreError(f"session store {self.where} refused the session "
                                    f"({len(data)} bytes; larger than its item size?)")

    def delete(self, sid: str) -> None:
        self._call(lambda: self.client.delete(self.prefix + sid, noreply=False))


class SQLStore:
    """Sessions in a table of the queue's database, expired by an ``expires_at`` column.

    Expired rows are invisible at once (every read checks the column) and deleted by
    :meth:`purge`, which any process runs on about one save in :attr:`purge_every`, so no
    separate cleaner process is needed.
    """

    table = "crashonly_sessions"
    purge_every = 200

    def __init__(self, url: str, *, clock: Callable[[], float] = time.time) -> None:
        self.url = url
        self.where = _redact(url)
        self.clock = clock
        scheme = urllib.parse.urlsplit(url).scheme
        self.postgres = scheme in ("postgres", "postgresql")
        self._local = threading.local()
        self._pool: Any = None
        if self.postgres:
            psycopg_pool = _driver("psycopg_pool", "postgres")
            self._psycopg = _driver("psycopg", "postgres")
            self._pool = psycopg_pool.ConnectionPool(
                _libpq_url(url), min_size=1, max_size=8, kwargs={"autocommit": True},
                open=False)
            try:
                self._pool.open(wait=True, timeout=5)
            except Exception as exc:
                raise SessionStoreError(f"session store {self.where}: {exc}") from exc
            self._errors: tuple[type[BaseException], ...] = (self._psycopg.Error,)
            self._q = {
                "load": f"SELECT data FROM {self.table} WHERE id = %s AND expires_at > %s",
                "save": f"INSERT INTO {self.table} (id, data, expires_at) VALUES (%s, %s, %s) "
                        "ON CONFLICT (id) DO UPDATE SET data = excluded.data, "
                        "expires_at = excluded.expires_at",
                "delete": f"DELETE FROM {self.table} WHERE id = %s",
                "purge": f"DELETE FROM {self.table} WHERE expires_at <= %s",
                "schema": f"CREATE TABLE IF NOT EXISTS {self.table} (id TEXT PRIMARY KEY, "
                          "data BYTEA NOT NULL, expires_at DOUBLE PRECISION NOT NULL)",
            }
        else:
            from ..backends.sqlite import parse_url

            self.path = parse_url(url)[0]  # the same file the queue's backend opens
            self._errors = (sqlite3.Error,)
            self._q = {
                "load": f"SELECT data FROM {self.table} WHERE id = ? AND expires_at > ?",
                "save": f"INSERT INTO {self.table} (id, data, expires_at) VALUES (?, ?, ?) "
                        "ON CONFLICT (id) DO UPDATE SET data = excluded.data, "
                        "expires_at = excluded.expires_at",
                "delete": f"DELETE FROM {self.table} WHERE id = ?",
                "purge": f"DELETE FROM {self.table} WHERE expires_at <= ?",
                "schema": f"CREATE TABLE IF NOT EXISTS {self.table} (id TEXT PRIMARY KEY, "
                          "data BLOB NOT NULL, expires_at REAL NOT NULL)",
            }
        with self._cursor() as cur:
            cur.execute(self._q["schema"])
            cur.execute(f"CREATE INDEX IF NOT EXISTS {self.table}_expires "
                        f"ON {self.table} (expires_at)")

    def _sqlite(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            # one connection per thread; autocommit: each statement is its own transaction
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=10,
                                   check_same_thread=False)
            conn.execute("PRAGMA busy_timeout = 10000")
            if self.path != ":memory:":
                conn.execute("PRAGMA journal_mode = WAL")
            self._local.conn = conn
        return conn

    @contextmanager
    def _cursor(self) -> Iterator[Any]:
        try:
            if self.postgres:
                with self._pool.connection() as conn:
                    yield conn.cursor()
            else:
                yield self._sqlite().cursor()
        except self._errors as exc:
            raise SessionStoreError(f"session store {self.where}: {exc}") from exc

    def load(self, sid: str) -> bytes | None:
        with self._cursor() as cur:
            cur.execute(self._q["load"], (sid, self.clock()))
            row = cur.fetchone()
        return bytes(row[0]) if row is not None else None

    def save(self, sid: str, data: bytes, ttl: float) -> None:
        now = self.clock()
        with self._cursor() as cur:
            cur.execute(self._q["save"], (sid, data, now + ttl))
        if random.randrange(self.purge_every) == 0:
            self.purge()

    def delete(self, sid: str) -> None:
        with self._cursor() as cur:
            cur.execute(self._q["delete"], (sid,))

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
