"""The probe task, and the ledger that makes "exactly once" something counted, not assumed.

``crashonly chaos`` runs the user's own formation with ``CRASHONLY_CHAOS_PROBE=<queue>`` in its
environment. :func:`crashonly.loader.load_app` (which ``crashonly worker`` uses) sees it and calls
:func:`install`, which registers :data:`TASK` on the user's app: so the probe runs in the user's
worker command, with the user's app, database and settings, and no file of the user's changes.

The probe is a *transactional* task: each run sleeps a few milliseconds (checking
``cancelled``, so a SIGTERM releases it), then inserts one ledger row ``(run, job_id, attempt,
pid)`` through ``current_job().db`` — the connection of the very transaction that acks the job.
The row and the ack commit together or not at all, so at the end every probe job must be done
with exactly one ledger row. Zero rows for a done job: it was acked without running (lost work).
Two rows: its effect committed twice (duplicated work). Either is a violation.
"""

from __future__ import annotations

import os
from typing import Any

from ..context import current_job

__all__ = ["ENV", "LEDGER", "TASK", "create_ledger", "install", "probe", "read_ledger"]

ENV = "CRASHONLY_CHAOS_PROBE"
TASK = "crashonly.chaos.probe"
LEDGER = "crashonly_chaos_ledger"

_CREATE = (
    f"CREATE TABLE IF NOT EXISTS {LEDGER} ("
    " run TEXT NOT NULL, job_id BIGINT NOT NULL, attempt INTEGER NOT NULL,"
    " pid INTEGER NOT NULL)"
)
_INDEX = f"CREATE INDEX IF NOT EXISTS {LEDGER}_run ON {LEDGER} (run)"


def _placeholder(conn: Any) -> str:
    # sqlite3 takes ``?``, psycopg ``%s``; this module sees only a DB-API connection.
    return "?" if type(conn).__module__.startswith("sqlite3") else "%s"


def probe(run: str, ms: float) -> None:
    """Work for ``ms`` milliseconds, then record this run in the ledger (in the ack's transaction)."""
    job = current_job()
    if job.cancelled.wait(ms / 1000.0):
        job.check_cancelled()  # the worker is stopping: hand the job back (released)
    p = _placeholder(job.db)
    job.db.execute(
        f"INSERT INTO {LEDGER} (run, job_id, attempt, pid) VALUES ({p}, {p}, {p}, {p})",
        (run, job.id, job.attempt, os.getpid()),
    )


def install(app: Any, *, queue: str) -> None:
    """Register the probe task on ``app`` (idempotent)."""
    if TASK not in app.tasks:
        app.task(name=TASK, queue=queue, transactional=True, max_attempts=50)(probe)


def create_ledger(backend: Any) -> None:
    """Create the ledger table before any probe runs (not in the task: concurrent ``CREATE
    TABLE IF NOT EXISTS`` can fail on PostgreSQL)."""
    with backend.transaction() as conn:
        conn.execute(_CREATE)
        conn.execute(_INDEX)


def read_ledger(backend: Any, run: str) -> list[tuple[int, int, int]]:
    """``(job_id, attempt, pid)`` of every committed probe run of ``run``."""
    with backend.transaction() as conn:
        p = _placeholder(conn)
        cursor = conn.execute(f"SELECT job_id, attempt, pid FROM {LEDGER} WHERE run = {p}", (run,))
        return [(int(a), int(b), int(c)) for a, b, c in cursor.fetchall()]
