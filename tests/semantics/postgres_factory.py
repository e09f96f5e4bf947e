"""The contract suite's PostgreSQL backend: a schema of its own per test, dropped afterwards."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.conftest import require_service

__all__ = ["BASE_URL", "drop_schema", "postgres_url"]

BASE_URL = "postgresql://postgres@127.0.0.1:5432/test"


def drop_schema(schema: str, base_url: str = BASE_URL) -> None:
    """Drop ``schema`` and everything in it; sessions still holding locks in it are ended."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(base_url, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE pid <> pg_backend_pid() AND state LIKE 'idle in transaction%%' "
            "AND application_name LIKE 'crashonly%%' AND datname = current_database() "
            "AND EXISTS (SELECT 1 FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE l.pid = pg_stat_activity.pid AND n.nspname = %s)",
            (schema,),
        )
        conn.execute("SET lock_timeout = '10s'")
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def postgres_url(tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A URL on the shared server naming a fresh schema, dropped after the test. The schema
    also leads the connections' ``search_path``, so tables a test creates without a schema
    (transactional effects) are its own and go with it."""
    require_service("PostgreSQL", 5432)
    schema = f"t_{uuid.uuid4().hex[:16]}"
    request.addfinalizer(lambda: drop_schema(schema))
    return f"{BASE_URL}?schema={schema}&options=-c%20search_path%3D{schema}"
