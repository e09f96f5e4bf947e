"""Unique keys on every backend: scoped to the task, held while the job is live, by a done job
for ``unique_after_done`` seconds, by a buried job only with ``unique_while_buried``; an
enqueue that matches says so (docs/queue.md, "Unique keys")."""

from __future__ import annotations

import pytest

import crashonly
from crashonly.job import JobState
from tests.semantics.conftest import FakeClock, needs


@pytest.fixture(autouse=True)
def _unique(app: crashonly.App) -> None:
    needs(app, "unique_keys")


def test_a_live_duplicate_returns_the_live_job_and_says_so(app: crashonly.App) -> None:
    @app.task
    def t(x: int) -> int:
        return x

    first = t.options(unique_key="k").enqueue(1)
    again = t.options(unique_key="k").enqueue(2)
    assert again.id == first.id
    assert (first.duplicate, first.existing_state) == (False, None)
    assert (again.duplicate, again.existing_state) == (True, JobState.READY)
    assert "duplicate" in repr(again)
    app.drain()
    assert again.wait(1) == 1  # the first call's arguments: the second was never stored


def test_the_key_is_scoped_to_the_task(app: crashonly.App) -> None:
    @app.task
    def a() -> str:
        return "a"

    @app.task
    def b() -> str:
        return "b"

    ha = a.options(unique_key="k").enqueue()
    hb = b.options(unique_key="k").enqueue()
    by_name = app.enqueue(b.name, unique_key="k")
    assert ha.id != hb.id and not hb.duplicate
    assert by_name.id == hb.id and by_name.duplicate
    app.drain()
    assert (ha.wait(1), hb.wait(1)) == ("a", "b")


def test_a_buried_job_does_not_hold_its_key(app: crashonly.App) -> None:
    """The issue's case: a different task (and the same task) with the key of a buried job
    is stored and runs; its handle waits for its own result, not the old error."""

    @app.task(max_attempts=1)
    def fails() -> None:
        raise ValueError("old failure")

    @app.task
    def works() -> str:
        return "new work"

    old = fails.options(unique_key="k").enqueue()
    app.drain()
    assert old.state is JobState.BURIED
    other = works.options(unique_key="k").enqueue()
    same = fails.options(unique_key="k").enqueue()
    assert other.id != old.id and not other.duplicate
    assert same.id != old.id and not same.duplicate
    app.drain()
    assert other.wait(1) == "new work"
    with pytest.raises(crashonly.JobFailed):
        same.wait(1)  # ran (and failed) again: its own attempt, not the old job's error
    assert app.get_job(same.id).attempts == 1


def test_a_buried_job_holds_its_key_when_asked(app: crashonly.App) -> None:
    @app.task(max_attempts=1, unique_while_buried=True)
    def fails() -> None:
        raise ValueError("needs a human")

    old = fails.options(unique_key="k").enqueue()
    app.drain()
    again = fails.options(unique_key="k").enqueue()
    assert again.id == old.id
    assert (again.duplicate, again.existing_state) == (True, JobState.BURIED)
    assert app.retry(old.id)  # kicked: live again, still the holder
    assert fails.options(unique_key="k").enqueue().id == old.id
    app.drain()
    app.delete(old.id)  # deleted: the key is free
    fresh = fails.options(unique_key="k").enqueue()
    assert fresh.id != old.id and not fresh.duplicate


def test_a_done_job_keeps_its_key_for_the_window(app: crashonly.App, clock: FakeClock) -> None:
    runs: list[str] = []

    @app.task(unique_after_done=60)
    def report(period: str) -> str:
        runs.append(period)
        return f"report {period}"

    first = report.options(unique_key="report-10h").enqueue("10h")
    app.drain()
    clock.advance(59)
    again = report.options(unique_key="report-10h").enqueue("10h")
    assert (again.id, again.duplicate, again.existing_state) == (first.id, True, JobState.DONE)
    assert again.wait(1) == "report 10h"  # the done job's result
    assert app.drain() == 0
    clock.advance(2)  # the window has passed
    later = report.options(unique_key="report-10h").enqueue("10h")
    assert later.id != first.id and not later.duplicate
    app.drain()
    assert runs == ["10h", "10h"]


def test_by_default_a_done_job_frees_its_key(app: crashonly.App) -> None:
    @app.task
    def t() -> None: ...

    first = t.options(unique_key="k").enqueue()
    app.drain()
    second = t.options(unique_key="k").enqueue()
    assert second.id != first.id and not second.duplicate


def test_three_schedulers_run_a_periodic_report_once_per_period(
    app: crashonly.App, clock: FakeClock
) -> None:
    """The issue's case: three schedulers enqueue ``report-<period>`` one second apart, each
    time after the previous one already ran; the report runs once per period."""
    runs: list[str] = []

    @app.task
    def report(period: str) -> None:
        runs.append(period)

    period_seconds = 3600
    for hour in ("10h", "11h"):
        for _scheduler in range(3):
            report.options(unique_key=f"report-{hour}",
                           unique_after_done=period_seconds).enqueue(hour)
            app.drain()
            clock.advance(1)
        clock.advance(period_seconds - 3)
    assert runs == ["10h", "11h"]


def test_the_window_is_the_holders_and_outlives_retention(
    app: crashonly.App, clock: FakeClock
) -> None:
    app.retention = 100

    @app.task
    def t() -> None: ...

    first = t.options(unique_key="k", unique_after_done=500).enqueue()
    app.drain()
    clock.advance(200)
    app.recover()  # past retention, not past the key's window: kept
    assert t.options(unique_key="k").enqueue().id == first.id
    clock.advance(400)
    app.recover()
    with pytest.raises(crashonly.JobNotFound):
        app.get_job(first.id)
    assert t.options(unique_key="k").enqueue().id != first.id


def test_duplicates_in_one_batch_and_across_tasks(app: crashonly.App) -> None:
    @app.task
    def t(x: int) -> None: ...

    handles = t.options(unique_key="k").enqueue_many([(1,), (2,)])
    assert handles[0].id == handles[1].id
    assert [h.duplicate for h in handles] == [False, True]
    assert handles[1].existing_state is JobState.READY
    mixed = app.enqueue_many([(t.name, [1], {}), ("other", [], {})], unique_key="m")
    assert mixed[0].id != mixed[1].id and not any(h.duplicate for h in mixed)


def test_a_retried_job_whose_key_was_taken_runs_without_it(app: crashonly.App) -> None:
    """A buried job lets go of its key; once another job holds it, retrying the buried one
    runs it (it is not dropped) but does not take the key back."""

    @app.task(max_attempts=1)
    def flaky(fail: bool) -> str:
        if fail:
            raise ValueError("x")
        return "ok"

    old = flaky.options(unique_key="k").enqueue(True)
    app.drain()
    new = flaky.options(unique_key="k").enqueue(False)
    assert app.retry(old.id)
    assert flaky.options(unique_key="k").enqueue(False).id == new.id  # new still holds it
    app.drain()
    assert new.wait(1) == "ok"
    with pytest.raises(crashonly.JobFailed):
        old.wait(1)


def test_bad_unique_options(app: crashonly.App) -> None:
    with pytest.raises(crashonly.ConfigError, match="unique_after_done"):
        app.task(unique_after_done=-1)(lambda: None)

    @app.task
    def t() -> None: ...

    with pytest.raises(ValueError, match="unique_after_done"):
        t.options(unique_key="k", unique_after_done=float("nan")).enqueue()


def test_racing_enqueues_store_one_job_per_key(app: crashonly.App, clock: FakeClock) -> None:
    """Schedulers in parallel (own connections), each round with the previous holder done and
    past its window: every round stores exactly one job, and every other enqueue says so."""
    import threading

    needs(app, "multi_process")

    @app.task
    def t(x: int) -> None: ...

    schedulers = [crashonly.App(app.url, clock=clock) for _ in range(4)]
    for s in schedulers:
        s.task(name=t.name)(lambda x: None)
        s.backend.store_clock = clock  # type: ignore[attr-defined]  # the store's time too
    stored: list[int] = []
    errors: list[Exception] = []
    try:
        for round_ in range(5):
            barrier = threading.Barrier(len(schedulers))
            handles: list[crashonly.JobHandle] = []

            def enqueue(s: crashonly.App, n: int = round_, b: threading.Barrier = barrier,
                        out: list[crashonly.JobHandle] = handles) -> None:
                b.wait()
                try:
                    out.append(s.enqueue(t.name, args=[n], unique_key="k", unique_after_done=5))
                except Exception as exc:
                    errors.append(exc)

            threads = [threading.Thread(target=enqueue, args=(s,)) for s in schedulers]
            for th in threads:
                th.start()
            for th in threads:
                th.join(30)
            assert not errors and len(handles) == len(schedulers)
            assert len({h.id for h in handles}) == 1
            assert sorted(h.duplicate for h in handles) == [False, True, True, True]
            stored.append(handles[0].id)
            app.drain()
            clock.advance(6)
        assert len(set(stored)) == 5
    finally:
        for s in schedulers:
            s.close()
