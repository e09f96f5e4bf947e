"""Blame is exact: a worker's death is blamed on a job only if it was the only one running in
the dead process, so the neighbours of a poison job are never buried; SQLite and PostgreSQL."""

from __future__ import annotations

import time

import crashonly
from crashonly.job import JobState
from tests.processes.harness import Proc, worker


class Formation:
    """``n`` workers kept running like ``crashonly up`` does: a dead one is restarted."""

    def __init__(self, url: str, env: dict[str, str], n: int, *args: str) -> None:
        self.url, self.env, self.args = url, env, args
        self.procs = [self._start() for _ in range(n)]
        self.deaths = 0

    def _start(self) -> Proc:
        return worker(self.url, self.env, *self.args, app="stallapp:app")

    def keep_up(self) -> None:
        for i, p in enumerate(self.procs):
            if p.popen.poll() is not None:
                self.deaths += 1
                p.stop()
                self.procs[i] = self._start()

    def stop(self) -> None:
        for p in self.procs:
            p.stop()


def run_until(formation: Formation, done: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:  # type: ignore[operator]
        formation.keep_up()
        time.sleep(0.02)


def test_an_innocent_job_beside_a_poison_job_is_not_buried(
    url: str, subprocess_env: dict[str, str], queue: crashonly.App,
) -> None:
    innocent = queue.tasks["stallapp.short"].enqueue(0.5)
    poison = queue.tasks["stallapp.poison"].enqueue()
    formation = Formation(url, subprocess_env, 1, "--concurrency", "2")
    try:
        run_until(formation, lambda: poison.job.state is JobState.BURIED
                  and innocent.job.state is JobState.DONE, 30)
    finally:
        formation.stop()
    assert innocent.job.state is JobState.DONE, innocent.job
    job = poison.job
    assert job.state is JobState.BURIED and "poison" in (job.last_error or ""), job


def test_a_busy_formation_buries_exactly_the_poison_jobs(
    url: str, subprocess_env: dict[str, str], queue: crashonly.App,
) -> None:
    short, poison = queue.tasks["stallapp.short"], queue.tasks["stallapp.poison"]
    for _ in range(3):
        short.enqueue_many([(0.01,)] * 100)
        poison.enqueue()
    formation = Formation(url, subprocess_env, 2, "--concurrency", "4")

    def settled() -> bool:
        counts = queue.backend.stats().get("default", {})
        return counts.get("done", 0) + counts.get("buried", 0) == 303

    try:
        run_until(formation, settled, 90)
    finally:
        formation.stop()
    counts = queue.backend.stats()["default"]
    buried = queue.backend.list(state=JobState.BURIED)
    assert sorted(j.task for j in buried) == ["stallapp.poison"] * 3, [
        (j.id, j.task, j.last_error) for j in buried]
    assert counts["done"] == 300, counts
    assert all("poison" in (j.last_error or "") for j in buried)
