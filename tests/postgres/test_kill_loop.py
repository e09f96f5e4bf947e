"""The worker issue's kill loop on PostgreSQL: 4 workers, transactional jobs, a worker killed
(KILL or TERM) every 0.3 s and restarted; every job done, every effect exactly once."""

from __future__ import annotations

import random
import signal
import time

import pytest

import crashonly
from crashonly.errors import BackendUnavailable
from tests.postgres.conftest import create_effects, effects
from tests.processes.harness import Proc

pytestmark = pytest.mark.postgres
JOBS = 1000
KILL_EVERY = 0.3
BUDGET = 90.0


def test_kill_loop_loses_and_duplicates_nothing(pg_url: str, pg_env: dict[str, str]) -> None:
    app = crashonly.App(pg_url)
    app.migrate()
    create_effects(pg_url)
    app.enqueue_many([("pgapp.effect", [f"k{i}"], {}) for i in range(JOBS)])
    env = dict(pg_env, DATABASE_URL=pg_url)
    rng = random.Random(7)
    workers = [Proc(["worker", "pgapp:app"], env) for _ in range(4)]
    retired: list[Proc] = []
    kills = {"KILL": 0, "TERM": 0}
    deadline = time.monotonic() + BUDGET
    try:
        while time.monotonic() < deadline:
            try:
                if app.stats()["default"]["done"] == JOBS:
                    break
            except BackendUnavailable:
                pass
            time.sleep(KILL_EVERY)
            i = rng.randrange(len(workers))
            sig = rng.choice(["KILL", "TERM"])
            workers[i].signal(signal.SIGKILL if sig == "KILL" else signal.SIGTERM)
            kills[sig] += 1
            retired.append(workers[i])
            workers[i] = Proc(["worker", "pgapp:app"], env)
        for p in retired:
            code = p.wait(30)
            # A SIGTERM that lands while Python is still starting (before the worker's
            # handlers exist) ends it by default action; it held nothing yet.
            early = code == -signal.SIGTERM and not any(" ready " in x for x in p.lines)
            assert code in (0, -signal.SIGKILL) or early, f"worker exited {code}:\n{p.text()}"
    finally:
        for p in workers + retired:
            p.stop()
    stats = app.stats()["default"]
    assert stats["done"] == JOBS, (stats, kills)
    assert stats["buried"] == 0
    counted = effects(pg_url)
    assert len(counted) == JOBS, f"{JOBS - len(counted)} effects missing"
    duplicated = {k: n for k, n in counted.items() if n != 1}
    assert not duplicated, f"effects applied more than once: {list(duplicated.items())[:10]}"
    assert kills["KILL"] > 0 and kills["TERM"] > 0
    app.close()
