"""4 workers, 5,000 transactional jobs, a worker killed (KILL or TERM) every 0.3 s and
restarted: every job done, every effect exactly once, nothing buried.

:func:`kill_loop` is shared with the PostgreSQL suite (tests/postgres/test_kill_loop.py)."""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Callable

import crashonly
from crashonly.errors import BackendUnavailable
from tests.processes.harness import Proc, effects

KILL_EVERY = 0.3


def test_kill_loop_loses_and_duplicates_nothing(db_url: str, subprocess_env: dict[str, str]) -> None:
    kill_loop(db_url, dict(subprocess_env, DATABASE_URL=db_url), app_spec="workapp:app",
              task="workapp.effect", jobs=5000, budget=240.0,
              count_effects=lambda: effects(db_url.removeprefix("sqlite:///")))


def kill_loop(url: str, env: dict[str, str], *, app_spec: str, task: str, jobs: int,
              budget: float, count_effects: Callable[[], dict[str, int]]) -> None:
    app = crashonly.App(url)
    app.migrate()
    app.enqueue_many([(task, [f"k{i}"], {}) for i in range(jobs)])
    rng = random.Random(7)
    workers = [Proc(["worker", app_spec], env) for _ in range(4)]
    retired: list[Proc] = []
    kills = {"KILL": 0, "TERM": 0}
    deadline = time.monotonic() + budget
    try:
        while time.monotonic() < deadline:
            try:
                if app.stats().get("default", {}).get("done", 0) == jobs:
                    break
            except BackendUnavailable:
                pass
            time.sleep(KILL_EVERY)
            i = rng.randrange(len(workers))
            sig = rng.choice(["KILL", "TERM"])
            workers[i].signal(signal.SIGKILL if sig == "KILL" else signal.SIGTERM)
            kills[sig] += 1
            retired.append(workers[i])
            workers[i] = Proc(["worker", app_spec], env)
        for p in retired:
            code = p.wait(30)
            # -SIGTERM only for a worker killed before Python ran its first line of ours
            early = code == -signal.SIGTERM and "ready" not in p.text()
            assert code in (0, -signal.SIGKILL) or early, f"worker exited {code}:\n{p.text()}"
    finally:
        for p in workers + retired:
            p.stop()
    stats = app.stats()["default"]
    assert stats["done"] == jobs, (stats, kills)
    assert stats["buried"] == 0
    counted = count_effects()
    assert len(counted) == jobs, f"{jobs - len(counted)} effects missing"
    duplicated = {k: n for k, n in counted.items() if n != 1}
    assert not duplicated, f"effects applied more than once: {list(duplicated.items())[:10]}"
    assert kills["KILL"] > 0 and kills["TERM"] > 0
    app.close()
