"""The contract suite runs every test against every backend.

A backend is a factory ``(tmp_path, request) -> url``; add one to ``BACKENDS`` and the whole
suite runs on it. A backend lacking a capability skips exactly those tests, by declaration
(``needs(app, "transactional")``), never by accident.

An outside backend (a third-party package, docs/backends.md): ``CRASHONLY_CONTRACT_URL`` names
its URL and the suite runs on it alone. ``{tmp}`` in it becomes the test's own temporary folder,
``{unique}`` a fresh hex name (a database or schema per test), e.g.
``CRASHONLY_CONTRACT_URL='mybackend:///{tmp}/q.db' pytest tests/semantics``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import crashonly


class FakeClock:
    """Injected time: tests advance it instead of sleeping."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _sqlite(tmp_path: Path, request: pytest.FixtureRequest) -> str:
    return f"sqlite:///{tmp_path / 'contract.db'}"


def _sqlite_memory(tmp_path: Path, request: pytest.FixtureRequest) -> str:
    return "sqlite:///:memory:"


BACKENDS: dict[str, Callable[[Path, pytest.FixtureRequest], str]] = {
    "sqlite": _sqlite,
    "sqlite-memory": _sqlite_memory,
}

try:  # the PostgreSQL factory lives beside its backend's tests
    from tests.semantics.postgres_factory import postgres_url

    BACKENDS["postgres"] = postgres_url
except ImportError:
    pass

CONTRACT_URL = os.environ.get("CRASHONLY_CONTRACT_URL", "")


def _outside(tmp_path: Path, request: pytest.FixtureRequest) -> str:
    return CONTRACT_URL.replace("{tmp}", str(tmp_path)).replace("{unique}", uuid.uuid4().hex[:16])


if CONTRACT_URL:
    BACKENDS = {CONTRACT_URL.split("://", 1)[0]: _outside}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=sorted(BACKENDS))
def app(request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock) -> Iterator[crashonly.App]:
    url = BACKENDS[request.param](tmp_path, request)
    application = crashonly.App(url, clock=clock)
    # The store decides leases and schedules on its own clock: make it the fake one too.
    application.backend.store_clock = clock  # type: ignore[attr-defined]
    application.backend_name = request.param  # type: ignore[attr-defined]
    # The suite observes every job through get (state, result) and list/stats: a backend
    # without them cannot be checked by it, so every test says so.
    needs(application, "results")
    needs(application, "inspection")
    yield application
    application.close()


# The capability each enqueue option needs (App refuses the option without it).
OPTION_NEEDS = {"priority": "priorities", "delay": "delays", "run_at": "delays",
                "unique_key": "unique_keys", "connection": "transactional"}


def needs(app: crashonly.App, capability: str) -> None:
    """Skip the test unless the backend declares ``capability`` (a :class:`Capabilities` field;
    ``""``: nothing)."""
    if capability and not getattr(app.backend.capabilities, capability):
        pytest.skip(f"{app.backend_name} declares no {capability}")  # type: ignore[attr-defined]
