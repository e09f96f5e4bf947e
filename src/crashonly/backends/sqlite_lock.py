"""SQLite's write lock: who holds it, and taking it back from a transactional job.

A transactional task runs inside the ``BEGIN IMMEDIATE`` transaction that acks it, so it holds
the database's one write lock for as long as it runs, and every other writer (enqueues,
claims, lease renewals, sessions) waits. Two things bound the harm:

* :class:`Revoker`: past ``?transaction_timeout=`` seconds (default 10, under the waiters'
  ``busy_timeout`` of 30) a watchdog thread of the job's own process rolls its transaction
  back, which frees the lock at once, and the attempt fails. Rolling back from another thread
  is safe (SQLite connections are serialized), but the job's thread may go on issuing SQL on a
  connection that is no longer in a transaction, where each statement would commit on its
  own: so first an authorizer that refuses every statement of any other thread is installed
  (installing one expires the prepared statements, so cached ones are checked again too).
  Limit: a job that left a cursor half-read keeps SQLite's interrupt pending, so the rollback
  may not get through; then the lock is freed at the job's next statement (refused, and SQLite
  rolls the transaction back) or when it returns — never by committing its writes.
* A process that is *stopped* (SIGSTOP, a debugger, a frozen container) runs no watchdog, and
  no other process can take a POSIX lock from it. Waiters then fail after ``busy_timeout``
  with :func:`describe_holder`: the holder's pid, command and state, and what to do.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import struct
import threading
import time
from typing import Any

__all__ = ["Revoker", "describe_holder"]

# WAL mode: the write lock is byte 120 of the -shm file (SQLite's os_unix.c: UNIX_SHM_BASE =
# (22 + SQLITE_SHM_NLOCK) * 4, and WAL_WRITE_LOCK is slot 0).
_WAL_WRITE_LOCK = 120
_STATES = {"T": "stopped by a signal", "t": "stopped by a debugger", "D": "in uninterruptible I/O",
           "Z": "a zombie"}


def _holder(path: str) -> int | None:
    """The pid of another process holding the WAL write lock of ``path`` (None if none, or
    not visible from this PID namespace)."""
    try:
        fd = os.open(f"{path}-shm", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        probe = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, _WAL_WRITE_LOCK, 1, 0)
        kind, _, _, _, pid = struct.unpack("hhqqi4x", fcntl.fcntl(fd, fcntl.F_GETLK, probe))
    except OSError:
        return None
    finally:
        os.close(fd)
    return pid if kind != fcntl.F_UNLCK and pid > 0 else None


def describe_holder(path: str) -> str | None:
    """One sentence naming the process that holds ``path``'s write lock, and what to do."""
    pid = _holder(path)
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0].decode()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            command = f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:80]
    except (OSError, IndexError):
        state, command = "?", "?"
    if state in ("T", "t"):
        advice = (f"it keeps the lock until it is resumed (kill -CONT {pid}) or killed; "
                  "a stopped process runs no timeout")
    else:
        advice = ("a transactional job holds it while it runs (see ?transaction_timeout=); "
                  "keep such jobs short, or use PostgreSQL")
    what = _STATES.get(state, "running")
    return f"process {pid} ({command}, {what}) holds its write lock: {advice}"


class Revoker:
    """Takes SQLite's write lock back from a transactional job that holds it too long.

    ``start`` before the job runs, ``finish`` when it returns: ``finish`` returns False if the
    transaction was revoked meanwhile (rolled back; the job's later statements were refused).
    ``revoke`` may also be called at once (the worker's shutdown, past its grace)."""

    def __init__(self, conn: sqlite3.Connection, limit: float | None) -> None:
        self.conn = conn
        self.limit = limit
        self._gate = threading.Lock()
        self._finished = False
        self.revoked = False
        self._timer: threading.Timer | None = None

    def start(self) -> Revoker:
        if self.limit is not None:
            self._timer = threading.Timer(self.limit, self.revoke)
            self._timer.daemon = True
            self._timer.start()
        return self

    def finish(self) -> bool:
        """The job returned: from now on its transaction is left alone (to commit)."""
        with self._gate:
            self._finished = True
        if self._timer is not None:
            self._timer.cancel()
        if self.revoked:
            try:
                self.conn.set_authorizer(None)
            except sqlite3.Error:
                pass
        return not self.revoked

    def revoke(self) -> None:
        with self._gate:
            if self._finished or self.revoked:
                return
            self.revoked = True
            me = threading.get_ident()

            def only_me(*_: Any) -> int:
                return sqlite3.SQLITE_OK if threading.get_ident() == me else sqlite3.SQLITE_DENY

            try:
                # Stop a statement running now first: installing the authorizer waits for the
                # connection's mutex, which a running statement holds. Until the ROLLBACK the
                # job is still inside its transaction, so nothing it runs meanwhile commits.
                self.conn.interrupt()
                self.conn.set_authorizer(only_me)
                self._rollback()
            except sqlite3.Error:
                pass  # the connection is closing: its transaction ends with it

    def _rollback(self) -> None:
        """SQLite keeps the interrupt pending while any statement of the connection is still
        active (a half-read cursor of the job): retry a moment. If it stays, the transaction
        ends when the job returns (refused statements make it fail), never committed."""
        deadline = time.monotonic() + 1.0
        while self.conn.in_transaction:
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.OperationalError as exc:
                if "interrupt" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.005)
