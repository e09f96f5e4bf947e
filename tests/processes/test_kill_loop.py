"""4 workers, 5,000 transactional jobs, a worker killed (KILL or TERM) every 0.3 s and
restarted: every job done, every effect exactly once, nothing buried."""

from __future__ import annotations

import random
import signal
import time

import crashonly
from crashonly.job import JobState
from tests.processes.harness import Proc, effects, worker

JOBS = 5000
KILL_EVERY = 0.3
BUDGET = 240.0


def test_kill_loop_loses_and_duplicates_nothing(db_url: str, subprocess_env: dict[str, str]) -> None:
    app = crashonly.App(db_url)
    handles = app.enqueue_many([("workapp.effect", [f"k{i}"], {}) for i in range(JOBS)])
    rng = random.Random(7)
    workers: list[Proc] = [worker(db_url, subprocess_env) for _ in range(4)]
    retired: list[Proc] = []
    kills = {"KILL": 0, "TERM": 0}
    deadline = time.monotonic() + BUDGET
    try:
        while time.monotonic() < deadline:
            stats = app.stats().get("default", {})
            if stats.get("done", 0) == JOBS:
                break
            time.sleep(KILL_EVERY)
            i = rng.randrange(len(workers))
            victim = workers[i]
            sig = rng.choice(["KILL", "TERM"])
            victim.signal(signal.SIGKILL if sig == "KILL" else signal.SIGTERM)
            kills[sig] += 1
            retired.append(victim)
            workers[i] = worker(db_url, subprocess_env)
        for p in retired:
            code = p.wait(30)
            # -SIGTERM only for a worker killed before Python ran its first line of ours
            early = code == -signal.SIGTERM and "ready" not in p.text()
            assert code in (0, -signal.SIGKILL) or early, f"worker exited {code}:\n{p.text()}"
    finally:
        for p in workers + retired:
            p.stop()
    stats = app.stats()["default"]
    assert stats["done"] == JOBS, (stats, kills)
    assert stats["buried"] == 0
    counted = effects(db_url.removeprefix("sqlite:///"))
    assert len(counted) == JOBS, f"{JOBS - len(counted)} effects missing"
    duplicated = {k: n for k, n in counted.items() if n != 1}
    assert not duplicated, f"effects applied more than once: {list(duplicated.items())[:10]}"
    assert kills["KILL"] > 0 and kills["TERM"] > 0
    assert all(h.job.state is JobState.DONE for h in handles[:50])
    app.close()
