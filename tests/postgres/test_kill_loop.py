"""The worker issue's kill loop on PostgreSQL: 4 workers, transactional jobs, a worker killed
(KILL or TERM) every 0.3 s and restarted; every job done, every effect exactly once."""

from __future__ import annotations

import pytest

import crashonly
from tests.postgres.conftest import create_effects, effects
from tests.processes.test_kill_loop import kill_loop

pytestmark = pytest.mark.postgres


def test_kill_loop_loses_and_duplicates_nothing(pg_url: str, pg_env: dict[str, str]) -> None:
    app = crashonly.App(pg_url)
    app.migrate()  # creates the test's schema, where the effects table goes
    app.close()
    create_effects(pg_url)
    kill_loop(pg_url, dict(pg_env, DATABASE_URL=pg_url), app_spec="pgapp:app",
              task="pgapp.effect", jobs=1000, budget=90.0, count_effects=lambda: effects(pg_url))
