"""Fixtures shared by the process tests: the backend a test runs on, a queue with the stall
app's tasks, and worker processes stopped after the test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import crashonly
from tests.apps.stallapp import register
from tests.processes.harness import Proc
from tests.semantics.postgres_factory import postgres_url


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh queue on each backend (a PostgreSQL schema of its own, or an SQLite file)."""
    if request.param == "postgres":
        return postgres_url(tmp_path, request)
    return f"sqlite:///{tmp_path / 'queue.db'}"


@pytest.fixture
def queue(url: str) -> Iterator[crashonly.App]:
    """The queue at ``url`` with the tasks of :mod:`tests.apps.stallapp`, migrated."""
    app = crashonly.App(url)
    register(app)
    app.migrate()
    yield app
    app.close()


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    """Processes a test starts; each is stopped at the end."""
    started: list[Proc] = []
    yield started
    for p in started:
        p.stop()
