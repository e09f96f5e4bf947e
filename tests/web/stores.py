"""Session store URLs for the tests: real Redis, Memcached, SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require_service

PG_BASE = "postgresql://postgres@127.0.0.1:5432/test"


def _postgres(request: pytest.FixtureRequest) -> str:
    require_service("PostgreSQL", 5432)
    import psycopg

    schema = f"web_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_BASE, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")

    def drop() -> None:
        with psycopg.connect(PG_BASE, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")

    request.addfinalizer(drop)
    return f"{PG_BASE}?schema={schema}"


def store_url(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if kind == "redis":
        require_service("Redis", 6379)
        return "redis://127.0.0.1:6379/0"
    if kind == "memcached":
        require_service("Memcached", 11211)
        return "memcached://127.0.0.1:11211"
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'queue.db'}"
    if kind == "postgres":
        return _postgres(request)
    raise ValueError(kind)


KINDS = ["redis", "memcached", "sqlite", "postgres"]


@pytest.fixture(params=KINDS)
def any_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield store_url(request.param, tmp_path, request)
