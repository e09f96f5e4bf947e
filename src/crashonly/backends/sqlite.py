"""SQLite backend: the embedded default, many processes on one machine.

* WAL mode, ``synchronous=FULL`` by default: an enqueue that returned survives power loss.
  ``?synchronous=NORMAL`` in the URL trades that for speed (a power cut may lose the last
  commits; a process crash still loses nothing).
* Every write transaction is ``BEGIN IMMEDIATE``: it takes the write lock up front, so the
  busy handler can wait for it (a deferred transaction that upgrades to a writer can fail
  with ``SQLITE_BUSY`` no matter how long it waits).
* One connection per thread; ``:memory:`` has a single shared connection behind a lock.
* Files are created 0600 (the queue holds job arguments and results); the -wal and -shm files
  SQLite creates take the database file's mode. An existing file's mode is left as it is.
* ``journal_size_limit``: the WAL shrinks back to 4 MiB whenever it restarts after a
  checkpoint, so a burst (one huge transaction, a disk-full incident) does not leave it
  occupying the volume for good, and recovery's purge pass (once a minute) empties it when
  nobody is using it. A full disk is a :class:`BackendUnavailable` that says so.
* Death detection: a worker holds a POSIX lock on a file of its own (``<db>-workers/<id>.lock``)
  that the kernel releases when it dies, and registers pid, process start time, boot id and
  PID namespace as a fallback; any live process's recovery returns the jobs of a dead one (see
  :mod:`crashonly.liveness`). A worker whose graceful stop cannot deregister (a full disk)
  renames that file to ``<id>.stopped``: its jobs come back unblamed.
* Time: the backend reads the machine's clocks itself, under the write lock, so a lease starts
  when its claim holds the lock (not when the caller asked). Leases are decided on the
  monotonic clock, which steps of the wall clock do not move; schedules (``run_at``) are
  wall-clock times. The caller's ``now`` only turns its own times into delays.
* Throughput comes from fewer commits per job: claims in batches, and a batch's
  settlements (acks, releases, failures) folded into the next claim's transaction.
"""

from __future__ import annotations

import errno
import json
import os
import re
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from ..blame import Orphan, Verdict, judge
from ..errors import (
    BackendError,
    BackendUnavailable,
    ConfigError,
    SchemaError,
    StaleLease,
)
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
from ..liveness import (
    ProcessIdentity,
    WorkerLock,
    is_alive,
    lock_is_held,
    remove_lock_file,
    stopped_mark,
    this_process,
)
from .base import Capabilities, RecoveryReport, WorkerInfo
from .sql import load_queries
from .sqlite_lock import Revoker, describe_holder

__all__ = ["SCHEMA_VERSION", "SQLiteBackend"]

SCHEMA_VERSION = 3
Q = load_queries("sqlite.sql")
_SYNC_MODES = {"FULL", "NORMAL", "EXTRA", "OFF"}
_PURGE_EVERY = 60.0
JOURNAL_SIZE_LIMIT = 4 * 1024 * 1024  # a little above the WAL of one autocheckpoint period
_SETTLE = {
    SettlementKind.ACK: Q["ack"],
    SettlementKind.RELEASE: Q["release"],
    SettlementKind.FAIL: Q["fail"],
    SettlementKind.BURY: Q["bury_reserved"],
}


_job = job_from_row
_UNSAFE = re.compile(r"[^A-Za-z0-9._:-]")
# Shared by every process on the machine, whatever its namespace; not moved by wall-clock
# steps. (Not CLOCK_BOOTTIME: a suspended laptop suspends its workers too, and their leases
# should not expire for the time nobody ran.)
_MONOTONIC = getattr(time, "CLOCK_MONOTONIC", None)


def _writable(path: str) -> bool:
    """Can this process write the file and create files beside it? (Root ignores mode bits,
    so try rather than ask ``os.access``.)"""
    try:
        if os.path.exists(path):
            with open(path, "ab"):
                pass
        probe = f"{path}.crashonly-probe-{os.getpid()}"
        with open(probe, "wb"):
            pass
        os.unlink(probe)
    except OSError:
        return False
    return True


def create_private(path: str) -> None:
    """Create the database file readable by its owner only, unless it exists (then its mode,
    chosen by someone, is kept). O_EXCL: when two processes race, one creates, both go on."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    except FileExistsError:
        pass


def parse_url(url: str) -> tuple[str, dict[str, str]]:
    """``sqlite:///relative.db``, ``sqlite:////abs/path.db``, ``sqlite:///:memory:``."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "sqlite":
        raise ConfigError(f"not an SQLite URL: {url!r}")
    if parts.netloc:
        raise ConfigError(
            f"malformed SQLite URL {url!r}: use sqlite:///relative/path.db or "
            "sqlite:////absolute/path.db (three slashes, then the path)"
        )
    path = urllib.parse.unquote(parts.path)
    if path.startswith("/"):
        path = path[1:]
    if not path:
        raise ConfigError(f"malformed SQLite URL {url!r}: no file path after sqlite:///")
    options = dict(urllib.parse.parse_qsl(parts.query))
    unknown = set(options) - {"synchronous", "busy_timeout", "transaction_timeout"}
    if unknown:
        raise ConfigError(
            f"unknown SQLite URL option(s) {', '.join(sorted(unknown))} in {url!r}; "
            "known: synchronous=FULL|NORMAL, busy_timeout=SECONDS, transaction_timeout=SECONDS"
        )
    sync = options.get("synchronous", "FULL").upper()
    if sync not in _SYNC_MODES:
        raise ConfigError(f"synchronous={sync} in {url!r}: use FULL (default) or NORMAL")
    options["synchronous"] = sync
    return path, options


class SQLiteBackend:
    """The queue in one SQLite file (or in memory, for tests)."""

    def __init__(self, url: str, *, create: bool = True) -> None:
        self.url = url
        self.path, options = parse_url(url)
        self.memory = self.path == ":memory:"
        self.synchronous = options["synchronous"]
        try:
            self.busy_timeout = float(options.get("busy_timeout", "30"))
        except ValueError:
            raise ConfigError(f"busy_timeout in {url!r} must be a number of seconds") from None
        try:
            self.transaction_timeout = float(options.get("transaction_timeout", "10"))
        except ValueError:
            self.transaction_timeout = -1.0
        if not 0 < self.transaction_timeout < float("inf"):
            raise ConfigError(
                f"transaction_timeout in {url!r} must be a positive number of seconds"
            )
        self.capabilities = Capabilities(
            transactional=True, delays=True, priorities=True, unique_keys=True, results=True,
            inspection=True, fencing=True, multi_process=not self.memory,
        )
        if not self.memory:
            self.path = os.path.abspath(self.path)
            folder = os.path.dirname(self.path)
            if not os.path.isdir(folder):
                raise BackendUnavailable(
                    f"cannot open {self.path}: the folder {folder} does not exist"
                )
            if not create and not os.path.exists(self.path):
                raise BackendUnavailable(
                    f"database file {self.path} does not exist: check DATABASE_URL, "
                    "or run `crashonly migrate` to create it"
                )
        self._local = threading.local()
        self._shared: sqlite3.Connection | None = None
        self._lock: AbstractContextManager[Any] = (
            threading.RLock() if self.memory else nullcontext()
        )
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._last_purge = 0.0
        self._ready = False
        # The store's clock. None: the machine's (wall clock for records and schedules,
        # monotonic for leases). Tests set a fake one to let leases expire without sleeping.
        self.store_clock: Callable[[], float] | None = None
        self._registrations: dict[str, tuple[WorkerInfo, WorkerLock | None]] = {}
        self._real_path: str | None = None

    # --- connections ------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        try:
            if not self.memory:
                create_private(self.path)
            conn = sqlite3.connect(
                self.path,
                isolation_level=None,
                timeout=self.busy_timeout,
                check_same_thread=False,  # see abort()
                cached_statements=256,
            )
            if not self.memory:
                mode = self._wal_mode(conn)
                if str(mode).lower() != "wal":
                    raise BackendUnavailable(f"cannot put {self.path} in WAL mode (got {mode})")
                conn.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
        except (sqlite3.DatabaseError, OSError) as exc:
            raise self._translate(exc) from exc
        with self._connections_lock:
            self._connections.append(conn)
        return conn

    def _wal_mode(self, conn: sqlite3.Connection) -> str:
        """Switch to WAL (persistent: a no-op once any process did it). On a fresh file,
        processes opening it at once race for the switch, and SQLite answers the losers
        "locked" at once, without its busy handler: wait for the winner instead."""
        deadline = time.monotonic() + self.busy_timeout
        while True:
            try:
                return str(conn.execute("PRAGMA journal_mode=WAL").fetchone()[0])
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.002)

    @property
    def conn(self) -> sqlite3.Connection:
        """This thread's connection (the shared one for ``:memory:``), schema checked."""
        if self.memory:
            if self._shared is None:
                self._shared = self._connect()
                self._ensure_schema(self._shared)
            return self._shared
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
            if not self._ready:
                self._ensure_schema(conn)
        return conn

    def _translate(self, exc: sqlite3.Error | OSError) -> BackendError:
        text = str(exc)
        where = self.path
        if "disk is full" in text or getattr(exc, "errno", None) == errno.ENOSPC:
            return BackendUnavailable(
                f"database {where}: the disk is full, so nothing can be written (what was "
                "acknowledged is kept; the failed write changed nothing): free space on its "
                "volume, and writes go on"
            )
        if getattr(exc, "errno", None) in (errno.EMFILE, errno.ENFILE):
            return BackendUnavailable(f"database {where}: this process has too many open files "
                                      f"({text}); it heals when connections close")
        if "readonly" in text or "read-only" in text:
            return BackendUnavailable(
                f"database {where} is read-only: give this process write access to the file "
                "and its folder (SQLite writes -wal and -shm files beside it)"
            )
        if "locked" in text or "busy" in text:
            holder = None if self.memory else describe_holder(self.path)
            return BackendUnavailable(
                f"database {where} is locked by another process for longer than "
                f"{self.busy_timeout:g} s: "
                + (holder or "find the process holding it, or raise ?busy_timeout= in the URL")
            )
        if "disk is full" in text or "disk I/O error" in text:
            return BackendUnavailable(
                f"database {where} cannot be written ({text}): free space on its volume"
            )
        if "not a database" in text or "malformed" in text or "corrupt" in text:
            return BackendUnavailable(
                f"database {where} is corrupt or not an SQLite file ({text}): restore it from "
                "a backup or point DATABASE_URL at another file"
            )
        if "unable to open" in text or isinstance(exc, OSError):
            if not self.memory and not _writable(self.path):
                return BackendUnavailable(
                    f"database {where} is read-only: give this process write access to the "
                    "file and its folder (SQLite writes -wal and -shm files beside it)"
                )
            return BackendUnavailable(f"cannot open database {where}: {text}")
        return BackendError(f"SQLite error on {where}: {text}")

    @contextmanager
    def _write(self, conn: sqlite3.Connection | None = None) -> Iterator[sqlite3.Connection]:
        """A ``BEGIN IMMEDIATE`` transaction, committed on success and rolled back otherwise."""
        with self._lock:
            conn = conn or self.conn
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.DatabaseError as exc:
                raise self._translate(exc) from exc
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            try:
                conn.execute("COMMIT")
            except sqlite3.DatabaseError as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise self._translate(exc) from exc

    def _read(self, query: str, params: dict[str, Any] | Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            try:
                return self.conn.execute(query, params).fetchall()
            except sqlite3.DatabaseError as exc:
                raise self._translate(exc) from exc

    def _wall(self) -> float:
        return self.store_clock() if self.store_clock is not None else time.time()

    def _mono(self) -> float:
        if self.store_clock is not None:
            return self.store_clock()
        return time.clock_gettime(_MONOTONIC) if _MONOTONIC is not None else time.monotonic()

    def clock_skew(self, now: float) -> float:
        """The caller's clock minus this machine's wall clock."""
        return now - self._wall()

    # --- schema -----------------------------------------------------------------------------
    def _version(self, conn: sqlite3.Connection) -> int:
        try:
            if not conn.execute(Q["has_meta"]).fetchall():
                return 0
            row = conn.execute(Q["schema_version"]).fetchone()
        except sqlite3.DatabaseError as exc:
            raise self._translate(exc) from exc
        return int(row[0]) if row else 0

    def _ensure_schema(self, conn: sqlite3.Connection) -> None:
        version = self._version(conn)
        if version > SCHEMA_VERSION:
            raise SchemaError(
                f"database {self.path} has crashonly schema version {version}, newer than "
                f"this crashonly understands ({SCHEMA_VERSION}): upgrade crashonly"
            )
        if version < SCHEMA_VERSION:
            self._migrate(conn)
        self._ready = True

    def _migrate(self, conn: sqlite3.Connection) -> int:
        with self._write(conn):
            version = self._version(conn)  # again, under the write lock
            if version > SCHEMA_VERSION:
                raise SchemaError(
                    f"database {self.path} has crashonly schema version {version}, newer than "
                    f"this crashonly understands ({SCHEMA_VERSION}): upgrade crashonly"
                )
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for statement in Q[f"migration_{target}"].split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(Q["set_schema_version"], {"version": str(target)})
        return SCHEMA_VERSION

    def migrate(self) -> int:
        _ = self.conn  # opens, checks and migrates
        return SCHEMA_VERSION

    def close(self) -> None:
        with self._connections_lock:
            for conn in self._connections:
                try:
                    conn.close()
                except sqlite3.Error:
                    pass
            self._connections.clear()
        self._local = threading.local()
        self._shared = None

    # --- producers --------------------------------------------------------------------------
    def put(self, jobs: Sequence[NewJob], *, now: float, connection: Any = None) -> list[int]:
        if not jobs:
            return []
        if connection is not None:
            return self._put_rows(connection, jobs, now)
        with self._write() as conn:
            return self._put_rows(conn, jobs, now)

    def _put_rows(self, conn: sqlite3.Connection, jobs: Sequence[NewJob], now: float) -> list[int]:
        # The caller's run_at is a delay from the caller's now; it lands on the store's clock.
        wall = self._wall()
        rows = [
            (j.task, j.queue, "scheduled" if j.run_at > now else "ready", j.priority, j.payload,
             j.max_attempts, j.lease, wall + (j.run_at - now), wall, j.unique_key)
            for j in jobs
        ]
        try:
            if all(j.unique_key is None for j in jobs):
                # Under the write lock AUTOINCREMENT ids of one statement are consecutive.
                conn.executemany(Q["insert_job"], rows)
                last = conn.execute(Q["last_id"]).fetchone()[0]
                return list(range(last - len(rows) + 1, last + 1))
            ids: list[int] = []
            for j, row in zip(jobs, rows, strict=True):
                if j.unique_key is None:
                    conn.execute(Q["insert_job"], row)
                    ids.append(conn.execute(Q["last_id"]).fetchone()[0])
                    continue
                named = {"task": j.task, "queue": j.queue, "state": row[2], "priority": j.priority,
                         "payload": j.payload, "max_attempts": j.max_attempts, "lease": j.lease,
                         "run_at": row[7], "now": wall, "unique_key": j.unique_key,
                         "key_done_for": j.unique_after_done,
                         "key_buried": int(j.unique_while_buried)}
                conn.execute(Q["release_key"], named)
                got = conn.execute(Q["insert_unique_job"], named).fetchone()
                if got is not None:
                    ids.append(got[0])
                else:  # under the write lock, the holder is still there
                    held = conn.execute(Q["find_unique"], named).fetchone()
                    ids.append(Existing(held[0], held[1]))
            return ids
        except sqlite3.DatabaseError as exc:
            raise self._translate(exc) from exc

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
        token = int.from_bytes(os.urandom(8), "big") >> 2  # 62 random bits, no hashlib import
        params: dict[str, Any] = {"worker": worker_id, "token": token,
                                  "queue": queues[0] if queues else "", "limit": limit}
        try:
            with self._write() as conn:
                # Read under the write lock: a claim that waited for another transaction's
                # long write lock starts its leases now, not when it began to wait.
                params["now"] = now = self._wall()
                params["mono"] = self._mono()
                refused = self._settle(conn, settle, now) if settle else []
                alone = False
                if len(queues) == 1 and not conn.execute(Q["suspects_waiting"]).fetchone():
                    rows = conn.execute(Q["claim_next"], params).fetchall()
                else:
                    rows, alone = self._claim_by_candidates(conn, queues, params)
        except sqlite3.DatabaseError as exc:
            raise self._translate(exc) from exc
        rows.sort(key=lambda r: (r[3], r[9], r[0]))
        lease_expires = now  # plus each job's lease, below
        return [
            Reservation(
                job=Job(
                    id=r[0], task=r[1], queue=r[2], state=JobState.RESERVED, priority=r[3],
                    payload=r[4], attempts=r[5], max_attempts=r[6], deaths=r[7], run_at=r[9],
                    created_at=r[10], unique_key=r[11], last_error=r[12],
                    lease_expires_at=lease_expires + r[8], worker=worker_id, result=None,
                ),
                token=token, lease=r[8], payload=r[4], alone=alone,
            )
            for r in rows
        ], refused

    @staticmethod
    def _claim_by_candidates(
        conn: sqlite3.Connection, queues: Sequence[str], params: dict[str, Any]
    ) -> tuple[list[Any], bool]:
        """The general claim: the best candidates of each queue, merged by (priority, run_at,
        id). A job suspected of killing its last holder is claimed alone (and the second value
        is True: the worker runs it alone), so a later death can be blamed on it exactly;
        other jobs are claimed up to the first suspect."""
        found = sorted(
            row
            for queue in dict.fromkeys(queues)
            for row in conn.execute(Q["claim_candidates"], {**params, "queue": queue})
        )[: params["limit"]]
        if not found:
            return [], False
        alone = bool(found[0][3])
        if alone:
            ids = [found[0][2]]
        else:
            ids = []
            for _priority, _run_at, job_id, alone in found:
                if alone:
                    break
                ids.append(job_id)
        return conn.execute(Q["claim"], {**params, "ids": json.dumps(ids)}).fetchall(), alone

    def settle(self, settlements: Sequence[Settlement], *, now: float) -> list[int]:
        if not settlements:
            return []
        try:
            with self._write() as conn:
                return self._settle(conn, settlements, self._wall())
        except sqlite3.DatabaseError as exc:
            raise self._translate(exc) from exc

    @staticmethod
    def _settle(conn: sqlite3.Connection, settlements: Sequence[Settlement], now: float) -> list[int]:
        """Apply settlements; return the ids refused for a stale token.

        Acks (the common case) in one statement over a JSON array, the other kinds with one
        ``executemany`` each: every row matches at most one job (by primary key and token), so
        when the counts add up nothing was refused. Only when they do not is the
        batch redone row by row, under a savepoint, to name the refused ones."""
        acks = [[s.job_id, s.token, s.result] for s in settlements if s.kind is SettlementKind.ACK]
        by_kind: dict[SettlementKind, list[dict[str, Any]]] = {}
        for s in settlements:
            if s.kind is not SettlementKind.ACK:
                by_kind.setdefault(s.kind, []).append({
                    "id": s.job_id, "token": s.token, "now": now, "result": s.result,
                    "error": s.error, "delay": max(0.0, s.delay),
                })
        conn.execute("SAVEPOINT settle")
        applied = 0
        if acks:
            applied += conn.execute(Q["ack_many"], {"acks": json.dumps(acks), "now": now}).rowcount
        applied += sum(conn.executemany(_SETTLE[kind], rows).rowcount for kind, rows in by_kind.items())
        if applied == len(settlements):
            conn.execute("RELEASE settle")
            return []
        conn.execute("ROLLBACK TO settle")
        for s in settlements:
            if s.kind is SettlementKind.ACK:
                by_kind.setdefault(s.kind, []).append(
                    {"id": s.job_id, "token": s.token, "now": now, "result": s.result})
        refused = [
            row["id"]
            for kind, rows in by_kind.items()
            for row in rows
            if conn.execute(_SETTLE[kind], row).rowcount != 1
        ]
        conn.execute("RELEASE settle")
        return refused

    def touch(self, leases: Sequence[tuple[int, int]], *, now: float) -> list[int]:
        if not leases:
            return []
        refused = []
        try:
            with self._write() as conn:
                wall, mono = self._wall(), self._mono()  # under the lock, as for claims
                for job_id, token in leases:
                    params = {"id": job_id, "token": token, "now": wall, "mono": mono}
                    if conn.execute(Q["touch"], params).rowcount != 1:
                        refused.append(job_id)
        except sqlite3.DatabaseError as exc:
            raise self._translate(exc) from exc
        return refused

    def touch_worker(self, worker_id: str, *, now: float) -> int:
        try:
            with self._write() as conn:  # the clocks read under the lock, as touch() does
                params = {"worker": worker_id, "now": self._wall(), "mono": self._mono()}
                return conn.execute(Q["touch_worker"], params).rowcount
        except sqlite3.DatabaseError as exc:
            raise self._translate(exc) from exc

    def run_transactional(
        self,
        reservation: Reservation,
        fn: Callable[[Any], str | None],
        *,
        clock: Callable[[], float],
    ) -> str | None:
        try:
            with self._write() as conn:
                # Past transaction_timeout the job's transaction is rolled back from a
                # watchdog thread, so it cannot keep every other writer waiting.
                limit = None if self.memory else self.transaction_timeout
                revoker = Revoker(conn, limit).start()
                try:
                    result = fn(conn)
                except BaseException as exc:
                    if revoker.finish() or not isinstance(exc, Exception):
                        raise
                    raise self._held_too_long(reservation) from None
                if not revoker.finish():
                    raise self._held_too_long(reservation)
                params = {
                    "id": reservation.job.id, "token": reservation.token,
                    "now": self._wall(), "result": result,
                }
                if conn.execute(Q["ack"], params).rowcount != 1:
                    raise StaleLease(
                        f"job {reservation.job.id}: lease lost before commit; "
                        "its writes were rolled back"
                    )
                return result
        except sqlite3.DatabaseError as exc:
            raise self._translate(exc) from exc

    def _held_too_long(self, reservation: Reservation) -> BackendError:
        return BackendError(
            f"job {reservation.job.id} held SQLite's write lock longer than its "
            f"transaction_timeout of {self.transaction_timeout:g} s, so its transaction was "
            "rolled back (every other writer waits meanwhile): make the job shorter, raise "
            "?transaction_timeout= in the URL, or use PostgreSQL"
        )

    def transaction(self) -> AbstractContextManager[Any]:
        return self._write()

    def abort(self, connection: Any) -> None:
        """Roll back a transaction another thread left open: a transactional job that outlived
        the shutdown grace holds SQLite's write lock, and the worker must release its jobs
        before exiting. The job's thread may still run: its later statements are refused
        rather than committed one by one (see :class:`~.sqlite_lock.Revoker`)."""
        Revoker(connection, None).revoke()

    # --- recovery and workers -----------------------------------------------------------------
    def _lock_path(self, worker_id: str) -> str:
        # The real path: one file must never be known to this process under two names (a
        # probe under the other name would close a descriptor of it and drop our own lock).
        if self._real_path is None:
            self._real_path = os.path.realpath(self.path)
        return f"{self._real_path}-workers/{_UNSAFE.sub('_', worker_id)}.lock"

    def _dead_workers(self) -> tuple[list[str], set[str]]:
        """Workers provably gone, and which of them stopped gracefully. Gone: their lock file
        (or the ``.stopped`` mark it was renamed to) is free, or (neither file: an older
        crashonly, or registered for another process) their pid is gone from this PID
        namespace. A worker that neither can judge is left to its leases."""
        dead: list[str] = []
        stopped: set[str] = set()
        for row in self._read(Q["workers"]):
            if row[0] in self._registrations:
                continue  # ours, and we are running this
            alive = None
            if not self.memory:
                lock = self._lock_path(row[0])
                alive = lock_is_held(lock)
                if alive is None:  # probed in this order: a rename between the two is seen
                    alive = lock_is_held(stopped_mark(lock))
                    if alive is False:
                        stopped.add(row[0])
            if alive is None:
                alive = is_alive(ProcessIdentity(
                    host=row[1], boot_id=row[2], pid=row[3], start=row[4], pid_ns=row[9]))
            if alive is False:
                dead.append(row[0])
        return dead, stopped

    def recover(
        self, *, now: float, poison_after: int = 3, retention: float = 86400.0
    ) -> RecoveryReport:
        dead, stopped = self._dead_workers()
        wall = self._wall()
        purge = wall - self._last_purge >= _PURGE_EVERY
        clocks = {"now": wall, "mono": self._mono(), "dead": json.dumps(dead)}
        # Cheap reads first: a healthy queue needs no write lock here.
        if not (
            dead
            or purge
            or self._read(Q["orphans_exist"], clocks)
            or self._read(Q["due_scheduled_exist"], clocks)
        ):
            return RecoveryReport()
        requeued: list[int] = []
        buried: list[int] = []
        try:
            with self._write() as conn:
                now = self._wall()
                clocks.update(now=now, mono=self._mono())
                for worker_id in dead:
                    conn.execute(Q["deregister_worker"], {"id": worker_id})
                orphans = [
                    Orphan(id=r[0], token=r[1], worker=r[2], holder_alive=bool(r[3]),
                           holder_stopped=r[2] in stopped, deaths=r[4], attempts=r[5],
                           max_attempts=r[6])
                    for r in conn.execute(Q["orphans"], clocks)
                ]
                for o, verdict, error in judge(orphans, poison_after):
                    conn.execute(Q[verdict.value],
                                 {"id": o.id, "token": o.token, "now": now, "error": error})
                    (buried if verdict is Verdict.BURIED else requeued).append(o.id)
                promoted = conn.execute(Q["promote"], {"now": now}).rowcount
                purged = 0
                if purge:
                    purged = conn.execute(Q["purge"], {"before": now - retention, "now": now}).rowcount
                    self._last_purge = now
        except sqlite3.DatabaseError as exc:
            raise self._translate(exc) from exc
        if purge:
            self._truncate_wal()
        if not self.memory:
            for worker_id in dead:
                lock = self._lock_path(worker_id)
                remove_lock_file(stopped_mark(lock) if worker_id in stopped else lock)
        return RecoveryReport(
            dead_workers=dead, requeued=requeued, buried=buried, promoted=promoted, purged=purged
        )

    def _truncate_wal(self) -> None:
        """Checkpoint and empty the WAL if nobody is using it right now (never waiting: with
        the busy handler off, a reader or writer makes this a no-op until the next pass)."""
        if self.memory:
            return
        with self._lock:
            conn = self.conn
            try:
                conn.execute("PRAGMA busy_timeout=0")
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            except sqlite3.DatabaseError:
                pass  # busy, or the disk is full: the next pass tries again
            finally:
                conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")

    def register_worker(self, info: WorkerInfo) -> None:
        me = this_process()
        ours = info.pid == me.pid
        lock = None
        if ours and not self.memory and info.id not in self._registrations:
            try:
                # Before the row exists: a prober never finds a registered worker unlocked.
                lock = WorkerLock(self._lock_path(info.id))
            except OSError:
                lock = None  # a read-only folder: judged by pid and lease, as before
        elif info.id in self._registrations:
            lock = self._registrations[info.id][1]
        params = {
            "id": info.id, "host": info.host or me.host, "boot_id": me.boot_id,
            "pid": info.pid, "pid_start": me.start if ours else "",
            "pid_ns": me.pid_ns if ours else "",
            "started_at": info.started_at, "heartbeat_at": info.heartbeat_at,
            "queues": json.dumps(info.queues), "concurrency": info.concurrency,
        }
        try:
            with self._write() as conn:
                conn.execute(Q["register_worker"], params)
        except BaseException:
            if lock is not None and info.id not in self._registrations:
                lock.release()
            raise
        if ours:
            self._registrations[info.id] = (info, lock)

    def heartbeat(self, worker_id: str, *, now: float) -> None:
        with self._write() as conn:
            found = conn.execute(Q["heartbeat"], {"id": worker_id, "now": self._wall()}).rowcount
        if not found and worker_id in self._registrations:
            # Our registration vanished (deleted by hand, or by a process that wrongly judged
            # us dead): this process is alive, so register again and keep working. Jobs still
            # held under our token stay ours; any already requeued are fenced off by theirs.
            self.register_worker(self._registrations[worker_id][0])

    def deregister_worker(self, worker_id: str) -> None:
        try:
            with self._write() as conn:
                conn.execute(Q["deregister_worker"], {"id": worker_id})
        except BaseException:
            # We are stopping, not dying, but cannot say so in the store (a full disk): say it
            # beside the lock, so the jobs we could not release are not blamed on a death.
            registered = self._registrations.get(worker_id)
            if registered is not None and registered[1] is not None:
                registered[1].mark_stopped()
            raise
        _info, lock = self._registrations.pop(worker_id, (None, None))
        if lock is not None:
            lock.release()

    def workers(self) -> list[WorkerInfo]:
        return [
            WorkerInfo(
                id=r[0], host=r[1], pid=r[3], started_at=r[5], heartbeat_at=r[6],
                queues=json.loads(r[7]), concurrency=r[8],
            )
            for r in self._read(Q["workers"])
        ]

    # --- inspection and admin -----------------------------------------------------------------
    def get(self, job_id: int, *, payload: bool = True) -> Job | None:
        rows = self._read(Q["get"], {"id": job_id, "payload": int(payload)})
        return _job(rows[0]) if rows else None

    def list(
        self, *, state: JobState | None = None, queue: str | None = None, limit: int = 100
    ) -> list[Job]:
        params = {"state": state.value if state else None, "queue": queue, "limit": limit}
        return [_job(r) for r in self._read(Q["list"], params)]

    def stats(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for queue, state, count in self._read(Q["stats"]):
            out.setdefault(queue, {s.value: 0 for s in JobState})[state] = count
        return out

    def kick(self, job_ids: Sequence[int] | None, *, now: float) -> int:
        with self._write() as conn:
            now = self._wall()
            if job_ids is None:
                return conn.execute(Q["kick_all"], {"now": now}).rowcount
            return sum(conn.execute(Q["kick"], {"id": i, "now": now}).rowcount for i in job_ids)

    def delete(self, job_id: int) -> bool:
        with self._write() as conn:
            return conn.execute(Q["delete"], {"id": job_id}).rowcount == 1

    def bury(self, job_id: int, reason: str, *, now: float) -> bool:
        with self._write() as conn:
            params = {"id": job_id, "error": reason, "now": self._wall()}
            return conn.execute(Q["bury"], params).rowcount == 1

    def wait_for_change(self, timeout: float) -> bool:
        """Poll ``PRAGMA data_version`` (a counter bumped by other connections' commits)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            conn = self.conn
            start = conn.execute("PRAGMA data_version").fetchone()[0]
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(0.01, remaining))
            with self._lock:
                if conn.execute("PRAGMA data_version").fetchone()[0] != start:
                    return True
