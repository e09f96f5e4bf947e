"""The upgrade to task-scoped unique keys keeps what a database of the previous schema held:
live jobs keep their keys, buried ones let go, other tasks may use the same key."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

import crashonly
from crashonly.backends.sql import load_queries
from crashonly.job import JobState

OLD_ROWS = [  # task, state, unique_key: what the old schema allowed (one holder per key)
    ("t", "ready", "live"),
    ("t", "buried", "buried"),
    ("t", "done", "done"),
]
INSERT = (
    "INSERT INTO {table} (task, queue, state, priority, payload, max_attempts, lease_seconds, "
    "run_at, created_at, unique_key, finished_at) VALUES ({marks})"
)


def _old_sqlite(tmp_path: Path, request: pytest.FixtureRequest) -> str:
    import sqlite3

    q = load_queries("sqlite.sql")
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    for target in (1, 2):  # schema version 2, as the previous release left it
        conn.executescript(q[f"migration_{target}"])
    conn.execute(q["set_schema_version"], {"version": "2"})
    for task, state, key in OLD_ROWS:
        conn.execute(INSERT.format(table="crashonly_jobs", marks=", ".join("?" * 11)),
                     (task, "default", state, 100, '{"args":[],"kwargs":{}}', 5, 30.0,
                      time.time(), time.time(), key, time.time()))
    conn.close()
    return f"sqlite:///{path}"


def _old_postgres(tmp_path: Path, request: pytest.FixtureRequest) -> str:
    import psycopg

    from crashonly.backends.postgres import parse_url
    from tests.semantics.postgres_factory import postgres_url

    url = postgres_url(tmp_path, request)
    conninfo, schema, _ = parse_url(url)
    q = {k: v.replace("{schema}", f'"{schema}"') for k, v in load_queries("postgres.sql").items()}
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(q["migration_1"].encode())  # schema version 1, the previous release's
        conn.execute(q["set_schema_version"], {"version": "1"})
        for task, state, key in OLD_ROWS:
            conn.execute(INSERT.format(table=f'"{schema}".jobs', marks=", ".join(["%s"] * 11)),
                         (task, "default", state, 100, '{"args":[],"kwargs":{}}', 5, 30.0,
                          time.time(), time.time(), key, time.time()))
    return url


OLD: dict[str, Callable[[Path, pytest.FixtureRequest], str]] = {
    "sqlite": _old_sqlite, "postgres": _old_postgres,
}


@pytest.mark.parametrize("dialect", sorted(OLD))
def test_upgrade_keeps_live_keys_and_frees_buried_ones(
    dialect: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = OLD[dialect](tmp_path, request)
    app = crashonly.App(url)
    try:
        [live, buried, done] = sorted(job.id for job in app.list_jobs())
        again = app.enqueue("t", unique_key="live")
        assert (again.id, again.existing_state) == (live, JobState.READY)
        fresh = [app.enqueue("t", unique_key=k) for k in ("buried", "done")]
        assert not any(h.duplicate for h in fresh) and {h.id for h in fresh}.isdisjoint({buried, done})
        other_task = app.enqueue("u", unique_key="live")
        assert other_task.id != live and not other_task.duplicate
        assert app.migrate() == app.migrate()  # idempotent, and at the newest version
    finally:
        app.close()
