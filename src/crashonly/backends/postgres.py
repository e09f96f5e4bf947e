"""PostgreSQL backend: many machines, death noticed in a second, exactly-once effects.

* Its own schema (default ``crashonly``; ``?schema=`` in the URL or ``$CRASHONLY_SCHEMA``),
  created by ``crashonly migrate`` or on first use, under an advisory lock, with versioned
  migrations. Every query names the schema, so the caller's ``search_path`` is never touched.
* Claims are one statement: ``FOR UPDATE SKIP LOCKED`` picks a batch and the same statement
  flips it to reserved. A batch's settlements (acks, releases, failures) ride in the next
  claim's transaction, so a busy worker pays about one transaction per batch.
* Wake-ups: a statement trigger ``NOTIFY``\\s whenever a job becomes ready; an idle worker
  blocks on ``LISTEN`` on a connection of its own. Notifications are delivered at commit, so a
  transactional enqueue that rolls back wakes nobody.
* Time: every lease, schedule, retry delay and recovery decision is made on the server's clock
  (``clock_timestamp()``), so workers whose clocks disagree agree on the time. A caller's own
  times (``run_at``) arrive as delays from the caller's ``now``. :meth:`clock_skew` measures
  how far a caller's clock is off, for a warning.
* Death detection: each registered worker holds a session advisory lock on a connection of its
  own (never a pooled one: a pooled connection outlives its borrower and would hide a death).
  The lock dies with the process's connection; ``recover`` tries each registered worker's
  lock. A free lock alone is not a death (an admin, a pooler or a failover may end a live
  worker's session, and the worker re-takes its lock within a second): the worker is dead when
  its lock stays free for ``LOCK_GRACE`` seconds, or at once when it ran on this machine, in
  this PID namespace, and its process is gone. Lease expiry covers what a lock cannot see (a
  network partition that leaves the connection half-open until TCP keepalives end it).
* A server restart drops every lock at once. Workers reconnect and take their locks again; a
  lock older than the server's start gets ``RESTART_GRACE`` seconds to come back before its
  worker counts as dead, so a restart neither blames the jobs in flight nor duplicates them.
* Connections come from a ``psycopg_pool`` pool. After a connection breaks, the next call
  first probes the server with a plain connect (so a refused or starting server fails fast,
  with the server's own reason) and then builds a fresh pool.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
import psycopg_pool
from psycopg import errors as pg_errors
from psycopg import sql

from ..blame import Orphan, Verdict, judge
from ..errors import BackendError, BackendUnavailable, ConfigError, SchemaError, StaleLease
from ..job import (
    Existing,
    Job,
    JobState,
    NewJob,
    Reservation,
    Settlement,
    SettlementKind,
    job_from_row,
)
from ..liveness import ProcessIdentity, is_alive, this_process
from .base import Capabilities, RecoveryReport, WorkerInfo
from .sql import load_queries

__all__ = ["SCHEMA_VERSION", "PostgresBackend", "parse_url"]

SCHEMA_VERSION = 2
_RAW = load_queries("postgres.sql")
_OPTIONS = {"schema", "pool_max", "pool_timeout"}
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,39}")
_PURGE_EVERY = 60.0
_DEATH_SETTLES = 1.0  # how long a dead local process's session may take to end
# The store's clock, read once per statement; a test may fix it through %(store_now)s.
_NOW = "(SELECT coalesce(%(store_now)s::float8, extract(epoch from clock_timestamp())::float8))"
_KINDS = {
    SettlementKind.ACK: "ack",
    SettlementKind.RELEASE: "release",
    SettlementKind.FAIL: "fail",
    SettlementKind.BURY: "bury",
}
Conn = psycopg.Connection[Any]

# The pool warns on stderr about every connection a server restart breaks; this backend turns
# those failures into BackendUnavailable, which the worker logs once, in its own format.
if logging.getLogger("psycopg.pool").level == logging.NOTSET:
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)


_job = job_from_row


def _lock_key(*parts: str) -> int:
    """A stable non-negative 63-bit advisory lock key, namespaced by the parts."""
    digest = hashlib.blake2b("\0".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & 0x7FFF_FFFF_FFFF_FFFF


def parse_url(url: str) -> tuple[str, str, dict[str, str]]:
    """``(conninfo for psycopg, schema, crashonly options)``: our options leave the URL."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme
    if scheme not in ("postgres", "postgresql") and not scheme.startswith("postgresql+"):
        raise ConfigError(f"not a PostgreSQL URL: {url!r}")
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    ours = {k: v for k, v in query if k in _OPTIONS}
    rest = [(k, v) for k, v in query if k not in _OPTIONS]
    schema = ours.pop("schema", None) or os.environ.get("CRASHONLY_SCHEMA") or "crashonly"
    if not _SCHEMA_NAME.fullmatch(schema):
        raise ConfigError(
            f"schema name {schema!r} (from the URL's ?schema= or $CRASHONLY_SCHEMA) must be "
            "lowercase letters, digits and underscores, at most 40 characters, not starting "
            "with a digit"
        )
    conninfo = urllib.parse.urlunsplit(
        ("postgresql", parts.netloc, parts.path,
         urllib.parse.urlencode(rest, quote_via=urllib.parse.quote), parts.fragment)
    )
    return conninfo, schema, ours


def _number(options: dict[str, str], name: str, default: float, url: str) -> float:
    try:
        value = float(options.get(name, default))
    except ValueError:
        raise ConfigError(f"{name} in {url!r} must be a number") from None
    if value <= 0:
        raise ConfigError(f"{name} in {url!r} must be positive")
    return value


class _Passthrough(Exception):
    """Carries a user's own driver error through the boundary untranslated."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__(str(exc))
        self.exc = exc


@dataclass(kw_only=True, slots=True)
class _Registration:
    """A worker registered by this process: its lock lives as long as ``conn``."""

    info: WorkerInfo
    key: int
    conn: Conn | None


class PostgresBackend:
    """The queue in a PostgreSQL schema."""

    RESTART_GRACE = 10.0  # seconds a worker has to re-take its lock after a server restart
    LOCK_GRACE = 5.0  # seconds a live worker has to re-take a lock its session lost

    def __init__(self, url: str, *, create: bool = True) -> None:
        self.url = url
        self.conninfo, self.schema, options = parse_url(url)
        self.create = create
        self.pool_max = int(_number(options, "pool_max", 10, url))
        self.pool_timeout = _number(options, "pool_timeout", 5.0, url)
        self.capabilities = Capabilities(
            transactional=True, delays=True, priorities=True, unique_keys=True, results=True,
            inspection=True, fencing=True, multi_process=True, remote=True,
        )
        quoted = '"' + self.schema + '"'
        self.q = {
            name: text.replace("{schema}", quoted).replace("{now}", _NOW)
            for name, text in _RAW.items()
        }
        # The store's clock. None: the server's. Tests set a fake one to let leases expire
        # without sleeping.
        self.store_clock: Callable[[], float] | None = None
        self.channel = f"crashonly_{self.schema}"
        self._recovery_key = _lock_key("crashonly-recover", self.schema)
        self._migration_key = _lock_key("crashonly-migrate", self.schema)
        info = psycopg.conninfo.conninfo_to_dict(self.conninfo)
        self.where = (
            f"{info.get('host') or 'localhost'}:{info.get('port') or 5432}/"
            f"{info.get('dbname') or info.get('user') or ''} (schema {self.schema})"
        )
        self._pool: psycopg_pool.ConnectionPool[Conn] | None = None
        self._pool_lock = threading.Lock()
        self._broken = False
        self._ready = False
        self._listener: Conn | None = None
        self._listen_lock = threading.Lock()
        self._registrations: dict[str, _Registration] = {}
        self._reg_lock = threading.RLock()
        self._last_purge = float("-inf")
        self._waited_for: set[str] = set()
        self._closed = False

    # --- time -------------------------------------------------------------------------------
    def _clock(self) -> dict[str, float | None]:
        """The parameter every query with ``{now}`` binds: None means the server's clock."""
        return {"store_now": self.store_clock() if self.store_clock is not None else None}

    def clock_skew(self, now: float) -> float:
        """The caller's clock (``now``, read just before the call) minus the server's, the
        round trip halved."""
        start = time.monotonic()
        with self._conn() as conn:
            row = conn.execute("SELECT extract(epoch from clock_timestamp())::float8").fetchone()
        elapsed = time.monotonic() - start
        server = float(row[0]) if row else now
        return now + elapsed / 2 - server

    # --- connections ------------------------------------------------------------------------
    def _translate(self, exc: BaseException) -> BackendError:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, psycopg_pool.PoolTimeout):
            return BackendUnavailable(
                f"PostgreSQL at {self.where}: no connection within {self.pool_timeout:g} s "
                f"({text}); the server may be down or every connection busy: check the "
                "server, or raise ?pool_max= / ?pool_timeout= in DATABASE_URL"
            )
        if isinstance(exc, pg_errors.InsufficientPrivilege):
            return BackendUnavailable(
                f"PostgreSQL at {self.where} refused: {text}; grant this user rights on the "
                f"schema {self.schema} (or run `crashonly migrate` as its owner)"
            )
        if isinstance(exc, pg_errors.UndefinedTable | pg_errors.InvalidSchemaName):
            return SchemaError(
                f"PostgreSQL at {self.where}: {text}; the crashonly schema is missing or "
                "incomplete: run `crashonly migrate`"
            )
        if isinstance(exc, psycopg.OperationalError):
            return BackendUnavailable(
                f"PostgreSQL at {self.where} is unavailable: {text}; check that the server is "
                "running and DATABASE_URL is right"
            )
        return BackendError(f"PostgreSQL error on {self.where}: {text}")

    def _connect(self, purpose: str) -> Conn:
        """A connection of its own (not pooled), in autocommit."""
        try:
            conn: Conn = psycopg.connect(
                self.conninfo, autocommit=True, application_name=f"crashonly {purpose}"[:63],
                keepalives=1, keepalives_idle=10, keepalives_interval=5, keepalives_count=3,
            )
        except psycopg.Error as exc:
            raise self._translate(exc) from exc
        return conn

    def _open_pool(self) -> psycopg_pool.ConnectionPool[Conn]:
        with self._pool_lock:
            if self._closed:
                raise BackendError(f"the PostgreSQL backend for {self.where} is closed")
            if self._pool is not None and not self._broken:
                return self._pool
            old, self._pool = self._pool, None
            if old is not None:  # its threads may be mid-retry: let them end off the hot path
                _close_later(old)
            pool: psycopg_pool.ConnectionPool[Conn] = psycopg_pool.ConnectionPool(
                self.conninfo, min_size=1, max_size=self.pool_max, open=False,
                timeout=self.pool_timeout, name=f"crashonly-{self.schema}",
                kwargs={"autocommit": True, "application_name": "crashonly"},
            )
            # The pool's first connection is made by its own thread while we probe: the two
            # handshakes overlap instead of adding up (start-up time, issue 10.6). The probe
            # makes a refused, starting or misconfigured server fail now, with its own reason,
            # instead of after a pool timeout.
            pool.open(wait=False)
            try:
                self._connect("probe").close()
            except BaseException:
                _close_later(pool)
                raise
            self._pool, self._broken = pool, False
            return pool

    @contextmanager
    def _conn(self, *, translate: bool = True) -> Iterator[Conn]:
        """A pooled autocommit connection; driver errors become :mod:`crashonly.errors`."""
        if not self._ready:
            self._ensure_schema()
        with self._pooled(translate=translate) as conn:
            yield conn

    @contextmanager
    def _pooled(self, *, translate: bool = True) -> Iterator[Conn]:
        pool = self._open_pool()
        try:
            with pool.connection() as conn:
                try:
                    yield conn
                finally:
                    if conn.broken:
                        self._broken = True
        except psycopg_pool.PoolTimeout as exc:
            self._broken = True
            raise self._translate(exc) from exc
        except psycopg.Error as exc:
            if not translate:
                raise
            raise self._translate(exc) from exc
        except _Passthrough as carrier:
            raise carrier.exc from None

    # --- schema -----------------------------------------------------------------------------
    def _version(self, conn: Conn) -> int:
        row = conn.execute(self.q["schema_exists"]).fetchone()
        if not row or not row[0]:
            return 0
        got = conn.execute(self.q["schema_version"]).fetchone()
        return int(got[0]) if got else 0

    def _newer(self, version: int) -> SchemaError:
        return SchemaError(
            f"PostgreSQL at {self.where} has crashonly schema version {version}, newer than "
            f"this crashonly understands ({SCHEMA_VERSION}): upgrade crashonly"
        )

    def _ensure_schema(self, *, force: bool = False) -> None:
        with self._pooled() as conn:
            version = self._version(conn)
            if version > SCHEMA_VERSION:
                raise self._newer(version)
            if version == 0 and not (self.create or force):
                raise BackendUnavailable(
                    f"PostgreSQL at {self.where} has no crashonly schema: check DATABASE_URL "
                    "and ?schema=, or run `crashonly migrate` to create it"
                )
            if version < SCHEMA_VERSION:
                with conn.transaction():
                    conn.execute(self.q["lock_migrations"], {"key": self._migration_key})
                    version = self._version(conn)  # again, under the lock
                    if version > SCHEMA_VERSION:
                        raise self._newer(version)
                    for target in range(version + 1, SCHEMA_VERSION + 1):
                        # No parameters: psycopg sends the migration as one simple query, so
                        # it may hold many statements (and function bodies with semicolons).
                        conn.execute(self.q[f"migration_{target}"].encode())
                        conn.execute(self.q["set_schema_version"], {"version": str(target)})
        self._ready = True

    def migrate(self) -> int:
        self._ensure_schema(force=True)
        return SCHEMA_VERSION

    def close(self) -> None:
        """Close every connection. Registered workers are not deregistered: their locks go
        with their connections, so other processes recover their jobs (stopping is crashing)."""
        self._closed = True
        with self._reg_lock:
            for reg in self._registrations.values():
                if reg.conn is not None:
                    reg.conn.close()
            self._registrations.clear()
        with self._listen_lock:
            if self._listener is not None:
                self._listener.close()
                self._listener = None
        with self._pool_lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None

    # --- producers --------------------------------------------------------------------------
    def put(self, jobs: Sequence[NewJob], *, now: float, connection: Any = None) -> list[int]:
        if not jobs:
            return []
        if connection is None:
            with self._conn() as conn:
                return self._put(conn, jobs, now)
        if not isinstance(connection, psycopg.Connection):
            raise ConfigError(
                f"connection= must be a psycopg 3 connection to the queue's database, not "
                f"{type(connection).__name__} (with SQLAlchemy, pass "
                "session.connection().connection.driver_connection)"
            )
        if not self._ready:
            self._ensure_schema()
        try:
            return self._put(connection, jobs, now)
        except psycopg.Error as exc:
            raise self._translate(exc) from exc

    def _put(self, conn: Conn, jobs: Sequence[NewJob], now: float) -> list[int]:
        # The caller's run_at is a delay from the caller's clock; the server adds its own now.
        states = ["scheduled" if j.run_at > now else "ready" for j in jobs]
        clock = self._clock()
        if all(j.unique_key is None for j in jobs):
            params = {
                "task": [j.task for j in jobs], "queue": [j.queue for j in jobs],
                "state": states, "priority": [j.priority for j in jobs],
                "payload": [j.payload for j in jobs],
                "max_attempts": [j.max_attempts for j in jobs],
                "lease": [float(j.lease) for j in jobs],
                "delay": [float(j.run_at) - now for j in jobs], **clock,
            }
            return sorted(r[0] for r in conn.execute(self.q["insert_jobs"], params))
        ids: list[int] = []
        with conn.transaction():  # a savepoint inside the caller's transaction
            for j, state in zip(jobs, states, strict=True):
                row = {
                    "task": j.task, "queue": j.queue, "state": state, "priority": j.priority,
                    "payload": j.payload, "max_attempts": j.max_attempts,
                    "lease": float(j.lease), "delay": float(j.run_at) - now,
                    "unique_key": j.unique_key, **clock,
                }
                if j.unique_key is None:
                    single = {k: [v] for k, v in row.items() if k not in ("store_now", "unique_key")}
                    [[job_id]] = conn.execute(self.q["insert_jobs"], {**single, **clock})
                    ids.append(job_id)
                else:
                    ids.append(self._put_unique(conn, j, {
                        **row, "unique_key": j.unique_key, "key_done_for": j.unique_after_done,
                        "key_buried": j.unique_while_buried,
                    }))
        return ids

    def _put_unique(self, conn: Conn, job: NewJob, row: dict[str, Any]) -> int:
        """Insert a keyed job, or return the holder of its key as an :class:`Existing`."""
        for _ in range(5):  # the holder may be deleted or purged between the two statements
            conn.execute(self.q["release_key"], row)
            got = conn.execute(self.q["insert_unique_job"], row).fetchone()
            if got:
                return int(got[0])
            held = conn.execute(self.q["find_unique"], row).fetchone()
            if held:
                return Existing(held[0], held[1])
        raise BackendError(f"could not store a job with unique_key {job.unique_key!r}")

    # --- consumers --------------------------------------------------------------------------
    def reserve(
        self,
        *,
        worker_id: str,
        queues: Sequence[str],
        limit: int,
        now: float,
        settle: Sequence[Settlement] = (),
    ) -> tuple[list[Reservation], list[int]]:
        if limit <= 0:
            return [], self.settle(settle, now=now) if settle else []
        # Drop wake-ups already pending: the claim below sees every commit they announce.
        self._drain_notifications()
        params = {
            "queues": list(dict.fromkeys(queues)), "limit": limit, "worker": worker_id,
            "token": secrets.randbits(62), "commit": "on" if settle else "off", **self._clock(),
        }
        refused: list[int] = []
        with self._conn() as conn:
            if settle:
                with conn.transaction():
                    refused = self._settle(conn, settle, now)
                    rows = conn.execute(self.q["claim"], params).fetchall()
            else:
                rows = conn.execute(self.q["claim"], params).fetchall()
        rows.sort(key=lambda r: (r[4], r[10], r[0]))
        return [
            Reservation(job=_job(r[:19]), token=r[14], lease=r[9], payload=r[5], alone=r[19])
            for r in rows
        ], refused

    def settle(self, settlements: Sequence[Settlement], *, now: float) -> list[int]:
        if not settlements:
            return []
        with self._conn() as conn:
            return self._settle(conn, settlements, now)

    def _settle(self, conn: Conn, settlements: Sequence[Settlement], now: float) -> list[int]:
        params = {
            "ids": [s.job_id for s in settlements], "tokens": [s.token for s in settlements],
            "kinds": [_KINDS[s.kind] for s in settlements],
            "results": [s.result for s in settlements], "errors": [s.error for s in settlements],
            "delays": [max(0.0, float(s.delay)) for s in settlements], **self._clock(),
        }
        done = [r[0] for r in conn.execute(self.q["settle"], params)]
        return _missing([s.job_id for s in settlements], done)

    def touch(self, leases: Sequence[tuple[int, int]], *, now: float) -> list[int]:
        if not leases:
            return []
        params = {"ids": [i for i, _ in leases], "tokens": [t for _, t in leases],
                  **self._clock()}
        with self._conn() as conn:
            done = [r[0] for r in conn.execute(self.q["touch"], params)]
        return _missing([i for i, _ in leases], done)

    def touch_worker(self, worker_id: str, *, now: float) -> int:
        with self._conn() as conn:
            params = {"worker": worker_id, **self._clock()}  # the store's clock
            return conn.execute(self.q["touch_worker"], params).rowcount

    def run_transactional(
        self,
        reservation: Reservation,
        fn: Callable[[Any], str | None],
        *,
        clock: Callable[[], float],
    ) -> str | None:
        with self._conn() as conn, conn.transaction():
            try:
                result = fn(conn)
            except psycopg.Error as exc:  # the task's own SQL failed: its error, not ours
                if conn.broken:  # ... unless the connection died (a restart): an outage
                    raise
                raise _Passthrough(exc) from exc
            params = {
                "id": reservation.job.id, "token": reservation.token, "result": result,
                **self._clock(),
            }
            # The ack locks the job's row until commit, so recovery cannot hand the job to
            # another worker between this fence and the commit.
            if conn.execute(self.q["ack"], params).rowcount != 1:
                raise StaleLease(
                    f"job {reservation.job.id}: lease lost before commit; "
                    "its writes were rolled back"
                )
            return result

    def transaction(self) -> AbstractContextManager[Any]:
        return self._transaction()

    @contextmanager
    def _transaction(self) -> Iterator[Conn]:
        with self._conn() as conn, conn.transaction():
            try:
                yield conn
            except psycopg.Error as exc:  # the caller's SQL: its error, not ours
                raise _Passthrough(exc) from exc

    def abort(self, connection: Any) -> None:
        """End the session of a transactional job that outlived the shutdown grace: the
        server rolls its transaction back. Ended server-side, so the job's thread (which
        owns the connection) is never raced on the client side."""
        if not isinstance(connection, psycopg.Connection) or connection.closed:
            return
        pid = connection.info.backend_pid
        try:
            with self._conn() as conn:
                conn.execute(self.q["terminate"], {"pid": pid})
        except BackendError:
            pass  # the server is away: the transaction dies with our process anyway

    # --- recovery and workers -----------------------------------------------------------------
    def recover(
        self, *, now: float, poison_after: int = 3, retention: float = 86400.0
    ) -> RecoveryReport:
        self._keep_locks()
        # Purge cadence: local time is enough (the cut-off itself is on the server's clock).
        ticks = self.store_clock() if self.store_clock is not None else time.monotonic()
        purge = ticks - self._last_purge >= _PURGE_EVERY
        clock = self._clock()
        requeued: list[int] = []
        buried: list[int] = []
        with self._conn() as conn, conn.transaction():
            # One recoverer at a time: two would split a dead holder's batch between them
            # and each would blame its half as a lone job.
            got = conn.execute(self.q["lock_recovery"], {"key": self._recovery_key}).fetchone()
            if not got or not got[0]:
                return RecoveryReport()
            dead = self._delete_dead_workers(conn)
            orphans = [
                Orphan(id=r[0], token=r[1], worker=r[2], holder_alive=r[3], deaths=r[4],
                       attempts=r[5], max_attempts=r[6])
                for r in conn.execute(self.q["orphans"], {"dead": dead, **clock}).fetchall()
            ]
            for o, verdict, error in judge(orphans, poison_after):
                conn.execute(self.q[verdict.value],
                             {"id": o.id, "token": o.token, "error": error, **clock})
                (buried if verdict is Verdict.BURIED else requeued).append(o.id)
            promoted = conn.execute(self.q["promote"], clock).rowcount
            purged = 0
            if purge:
                params = {"retention": retention, **clock}
                purged = conn.execute(self.q["purge"], params).rowcount
                self._last_purge = ticks
        return RecoveryReport(
            dead_workers=dead, requeued=requeued, buried=buried, promoted=promoted, purged=purged
        )

    def _delete_dead_workers(self, conn: Conn) -> list[str]:
        """Delete the rows of dead workers and return their ids.

        Dead: the lock is free, and either it has stayed free for ``LOCK_GRACE`` seconds (a
        live worker whose session was ended re-takes it well within that) or the worker ran
        on this machine, in this PID namespace, and its process is gone. Such a process may
        still hold its lock for a few milliseconds, until the server reads its connection's
        end: for those, wait a moment for the server to catch up (once per worker, so a pid
        this machine cannot vouch for never slows every pass)."""
        dead = self._free_and_dead(conn)
        suspects = set()
        for row in conn.execute(self.q["workers"]):
            worker_id, host, pid, boot_id, pid_start, pid_ns = (
                row[0], row[1], row[2], row[7], row[8], row[9])
            if worker_id in self._waited_for or boot_id != this_process().boot_id:
                continue
            identity = ProcessIdentity(host=host, boot_id=boot_id, pid=pid, start=pid_start,
                                       pid_ns=pid_ns)
            if is_alive(identity) is False:
                suspects.add(worker_id)
        self._waited_for |= suspects
        deadline = time.monotonic() + _DEATH_SETTLES
        while suspects - set(dead) and time.monotonic() < deadline:
            time.sleep(0.005)
            dead += [w for w in self._free_and_dead(conn) if w not in dead]
        if dead:
            conn.execute(self.q["delete_workers"], {"ids": dead})
        return dead

    def _free_and_dead(self, conn: Conn) -> list[str]:
        dead = []
        rows = conn.execute(self.q["free_worker_locks"], {"grace": self.RESTART_GRACE})
        for worker_id, host, pid, boot_id, pid_start, pid_ns, free_for, lost_to_restart in rows:
            if lost_to_restart or (free_for is not None and free_for >= self.LOCK_GRACE):
                dead.append(worker_id)
                continue
            identity = ProcessIdentity(host=host, boot_id=boot_id, pid=pid, start=pid_start,
                                       pid_ns=pid_ns)
            if is_alive(identity) is False:
                dead.append(worker_id)
        return dead

    def _lock(self, reg: _Registration) -> None:
        """Take ``reg``'s advisory lock on a fresh connection of its own and (re)write its row."""
        info = reg.info
        me = this_process()
        conn = self._connect(f"worker {info.id}")
        try:
            # The lock outlives idle periods and is cut by keepalives on a dead network; a
            # session still holding this worker's key (a twin registration) fails us, in time.
            conn.execute(
                "SELECT set_config('idle_session_timeout', '0', false), "
                "set_config('lock_timeout', '10s', false)"
            )
            conn.execute(self.q["take_worker_lock"], {"key": reg.key})
            conn.execute(self.q["register_worker"], {
                "id": info.id, "host": info.host or me.host, "boot_id": me.boot_id,
                "pid": info.pid, "pid_start": me.start if info.pid == me.pid else "",
                "pid_ns": me.pid_ns if info.pid == me.pid else "",
                "started_at": info.started_at, "queues": json.dumps(info.queues),
                "concurrency": info.concurrency, "lock_key": reg.key, **self._clock(),
            })
        except psycopg.Error as exc:
            conn.close()
            raise self._translate(exc) from exc
        reg.conn = conn

    def _keep_locks(self) -> None:
        """Re-take the locks of this process's workers whose connection broke (a server
        restart or a dropped network); stay quiet while the server is still away."""
        with self._reg_lock:
            for reg in self._registrations.values():
                if reg.conn is not None and not reg.conn.closed:
                    try:
                        reg.conn.execute("SELECT 1")
                        continue
                    except psycopg.Error:
                        reg.conn.close()
                        reg.conn = None
                try:
                    self._lock(reg)
                except BackendError:
                    return

    def register_worker(self, info: WorkerInfo) -> None:
        if not self._ready:
            self._ensure_schema()
        with self._reg_lock:
            old = self._registrations.pop(info.id, None)
            if old is not None and old.conn is not None:
                old.conn.close()
            reg = _Registration(info=info, key=_lock_key(self.schema, info.id), conn=None)
            self._lock(reg)
            self._registrations[info.id] = reg

    def heartbeat(self, worker_id: str, *, now: float) -> None:
        self._keep_locks()
        with self._conn() as conn:
            found = conn.execute(self.q["heartbeat"], {"id": worker_id, **self._clock()}).rowcount
        if not found:
            # Our registration vanished (judged dead by someone, or deleted by hand) while this
            # process lives: register again, on a fresh lock connection, and keep working.
            with self._reg_lock:
                reg = self._registrations.get(worker_id)
                if reg is not None:
                    if reg.conn is not None:
                        reg.conn.close()
                        reg.conn = None
                    self._lock(reg)

    def deregister_worker(self, worker_id: str) -> None:
        with self._conn() as conn:
            conn.execute(self.q["deregister_worker"], {"id": worker_id})
        with self._reg_lock:
            reg = self._registrations.pop(worker_id, None)
            if reg is not None and reg.conn is not None:
                reg.conn.close()

    def workers(self) -> list[WorkerInfo]:
        with self._conn() as conn:
            rows = conn.execute(self.q["workers"]).fetchall()
        return [
            WorkerInfo(
                id=r[0], host=r[1], pid=r[2], started_at=r[3], heartbeat_at=r[4],
                queues=json.loads(r[5]), concurrency=r[6],
            )
            for r in rows
        ]

    # --- inspection and admin -----------------------------------------------------------------
    def get(self, job_id: int, *, payload: bool = True) -> Job | None:
        with self._conn() as conn:
            row = conn.execute(self.q["get"], {"id": job_id, "payload": payload}).fetchone()
        return _job(row) if row else None

    def list(
        self, *, state: JobState | None = None, queue: str | None = None, limit: int = 100
    ) -> list[Job]:
        params = {"state": state.value if state else None, "queue": queue, "limit": limit}
        with self._conn() as conn:
            return [_job(r) for r in conn.execute(self.q["list"], params)]

    def stats(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        with self._conn() as conn:
            for queue, state, count in conn.execute(self.q["stats"]):
                out.setdefault(queue, {s.value: 0 for s in JobState})[state] = count
        return out

    def kick(self, job_ids: Sequence[int] | None, *, now: float) -> int:
        with self._conn() as conn:
            if job_ids is None:
                return conn.execute(self.q["kick_all"], self._clock()).rowcount
            params = {"ids": [int(i) for i in job_ids], **self._clock()}
            return conn.execute(self.q["kick"], params).rowcount

    def delete(self, job_id: int) -> bool:
        with self._conn() as conn:
            return conn.execute(self.q["delete"], {"id": job_id}).rowcount == 1

    def bury(self, job_id: int, reason: str, *, now: float) -> bool:
        with self._conn() as conn:
            params = {"id": job_id, "error": reason, **self._clock()}
            return conn.execute(self.q["bury"], params).rowcount == 1

    # --- wake-ups -----------------------------------------------------------------------------
    def _drain_notifications(self) -> None:
        if self._listener is None or not self._listen_lock.acquire(blocking=False):
            return
        try:
            if self._listener is not None:
                for _ in self._listener.notifies(timeout=0):
                    pass
        except psycopg.Error:
            self._drop_listener()
        finally:
            self._listen_lock.release()

    def _drop_listener(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def wait_for_change(self, timeout: float) -> bool:
        """Block on ``LISTEN`` until a job becomes ready or ``timeout`` passes.

        The listening connection is opened on the first call; that call returns True at once,
        since whatever committed before it was not heard. While the server is away this
        sleeps out the timeout and returns False: the caller's next operation reports why."""
        with self._listen_lock:
            if self._listener is None or self._listener.closed:
                try:
                    if not self._ready:
                        self._ensure_schema()
                    conn = self._connect("listener")
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
                except (BackendError, psycopg.Error):
                    self._drop_listener()
                    time.sleep(max(0.0, timeout))
                    return False
                self._listener = conn
                return True
            try:
                woken = False
                for _ in self._listener.notifies(timeout=max(0.0, timeout), stop_after=1):
                    woken = True
                if woken:  # one wake-up stands for all those already waiting
                    for _ in self._listener.notifies(timeout=0):
                        pass
                return woken
            except psycopg.Error:
                self._drop_listener()
                return True


def _missing(wanted: Sequence[int], done: Sequence[int]) -> list[int]:
    """Ids of ``wanted`` not in ``done``, counting repeats (a job settled twice in one batch
    is applied once and refused once)."""
    left: dict[int, int] = {}
    for i in done:
        left[i] = left.get(i, 0) + 1
    refused = []
    for i in wanted:
        if left.get(i, 0) > 0:
            left[i] -= 1
        else:
            refused.append(i)
    return refused


def _close_later(pool: psycopg_pool.ConnectionPool[Conn]) -> None:
    """Close ``pool`` off the caller's path (its threads may be mid-retry)."""
    threading.Thread(target=pool.close, kwargs={"timeout": 5}, daemon=True).start()
