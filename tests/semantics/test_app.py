"""The user API on every backend: tasks, options, handles, the in-process runner."""

from __future__ import annotations

import asyncio
import os

import pytest

import crashonly
from crashonly.job import JobState, NewJob
from tests.semantics.conftest import FakeClock, needs


def test_enqueue_run_and_wait(app: crashonly.App) -> None:
    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    handle = add.enqueue(2, b=3)
    assert handle.state is JobState.READY
    assert app.drain() == 1
    assert handle.wait(timeout=1) == 5


def test_async_tasks_run(app: crashonly.App) -> None:
    @app.task
    async def double(x: int) -> int:
        await asyncio.sleep(0)
        return x * 2

    handle = double.enqueue(21)
    app.drain()
    assert handle.wait(timeout=1) == 42


def test_options_never_collide_with_arguments(app: crashonly.App, clock: FakeClock) -> None:
    needs(app, "priorities")
    needs(app, "delays")
    @app.task
    def echo(delay: int, queue: str, priority: int) -> list[object]:
        return [delay, queue, priority]

    now_handle = echo.enqueue(delay=1, queue="q", priority=2)
    later = echo.options(delay=30, priority=5, queue="slow").enqueue(7, "x", 9)
    job = later.job
    assert (job.state, job.queue, job.priority, job.args) == (JobState.SCHEDULED, "slow", 5, [7, "x", 9])
    assert job.run_at == clock.now + 30
    app.drain()
    assert now_handle.wait(1) == [1, "q", 2]


def test_enqueue_by_name_and_many(app: crashonly.App) -> None:
    @app.task(name="shout")
    def shout(word: str) -> str:
        return word.upper()

    one = app.enqueue("shout", args=["a"])
    many = shout.enqueue_many([("b",), {"word": "c"}])
    triples = app.enqueue_many([("shout", ["d"], {}), ("shout", [], {"word": "e"})])
    app.drain()
    assert [h.wait(1) for h in [one, *many, *triples]] == ["A", "B", "C", "D", "E"]
    with pytest.raises(TypeError, match="unknown enqueue option"):
        app.enqueue("shout", args=["x"], dely=3)


def test_unserialisable_argument_is_named(app: crashonly.App) -> None:
    @app.task
    def t(a: object, b: object = None) -> None: ...

    with pytest.raises(crashonly.SerializationError, match="keyword argument 'b'"):
        t.enqueue(1, b={1, 2})
    with pytest.raises(crashonly.SerializationError, match="argument 0"):
        t.enqueue(object())
    assert app.stats() == {}  # nothing half-enqueued


def test_failures_retry_then_bury_with_traceback(app: crashonly.App, clock: FakeClock) -> None:
    @app.task(max_attempts=2, retry_backoff=10)
    def boom() -> None:
        raise ValueError("no good")

    handle = boom.enqueue()
    app.drain()
    job = handle.job
    assert job.state is JobState.SCHEDULED and "ValueError: no good" in (job.last_error or "")
    assert 5 <= job.run_at - clock.now <= 15  # 10 s backoff with jitter
    clock.advance(16)
    app.drain()
    with pytest.raises(crashonly.JobFailed, match="no good") as info:
        handle.wait(timeout=1)
    assert "Traceback" in (info.value.error or "")


def test_retry_with_delay(app: crashonly.App, clock: FakeClock) -> None:
    calls = []

    @app.task
    def flaky() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise crashonly.Retry(delay=2)
        return "ok"

    handle = flaky.enqueue()
    app.drain()
    assert handle.job.state is JobState.SCHEDULED and handle.job.run_at == clock.now + 2
    clock.advance(2)
    app.drain()
    assert handle.wait(1) == "ok" and handle.job.attempts == 2


def test_cancelled_job_is_released(app: crashonly.App) -> None:
    @app.task
    def stops() -> None:
        raise crashonly.Cancelled()

    handle = stops.enqueue()
    app.run_worker_once()
    job = handle.job
    assert job.state is JobState.READY and job.attempts == 0


def test_current_job_and_scratch(app: crashonly.App, clock: FakeClock) -> None:
    seen: list[crashonly.JobContext] = []
    scratches: list[str] = []

    @app.task
    def inspect() -> str:
        ctx = crashonly.current_job()
        seen.append(ctx)
        scratches.append(ctx.scratch)
        assert os.path.isdir(ctx.scratch) and ctx.scratch == scratches[-1]
        with open(os.path.join(ctx.scratch, "big.tmp"), "w") as f:
            f.write("x" * 1000)
        if ctx.attempt == 1:
            raise RuntimeError("first attempt fails")
        return ctx.idempotency_key

    handle = inspect.enqueue()
    app.drain()
    clock.advance(10)
    app.drain()
    key = handle.wait(1)
    assert [c.attempt for c in seen] == [1, 2]
    assert seen[0].idempotency_key == seen[1].idempotency_key == key
    assert seen[0].id == handle.id and not seen[0].cancelled.is_set()
    assert len(set(scratches)) == 2  # one per attempt
    assert not any(os.path.exists(p) for p in scratches)  # removed whatever the outcome
    with pytest.raises(crashonly.CrashonlyError):
        crashonly.current_job()


def test_unknown_task_waits_out_a_rolling_deploy_then_is_buried(
    app: crashonly.App, clock: FakeClock, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CRASHONLY_UNKNOWN_TASK_GRACE", "60")
    unknown = app.enqueue("nobody.knows")
    [bad] = app.backend.put([NewJob(task="nobody.knows", queue="default", payload="{not json",
                                    run_at=clock.now)], now=clock.now)

    @app.task(name="nobody.knows.either")
    def fine() -> None: ...

    for _ in range(5):  # an old worker meets a new task: handed back later, no attempt counted
        app.drain(queues=["default"])
        job = unknown.job
        assert job.state is JobState.SCHEDULED and job.attempts == 0, job
        assert 0 < job.run_at - clock.now <= 15
        clock.advance(11)
    clock.advance(10)  # past the grace
    app.drain(queues=["default"])
    assert "unknown task 'nobody.knows'" in (unknown.job.last_error or "")
    assert unknown.job.state is JobState.BURIED
    assert app.get_job(bad).state is JobState.BURIED


def test_a_bad_unknown_task_grace_is_one_clear_error(
    app: crashonly.App, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CRASHONLY_UNKNOWN_TASK_GRACE", "soon")
    app.enqueue("nobody.knows")
    with pytest.raises(crashonly.ConfigError, match="CRASHONLY_UNKNOWN_TASK_GRACE='soon'"):
        app.drain(queues=["default"])


def test_undecodable_payload_of_a_known_task(app: crashonly.App, clock: FakeClock) -> None:
    @app.task(name="known")
    def known() -> None: ...

    [bad] = app.backend.put([NewJob(task="known", queue="default", payload='{"args": 3}',
                                    run_at=clock.now)], now=clock.now)
    app.drain()
    job = app.get_job(bad)
    assert job.state is JobState.BURIED and "undecodable payload" in (job.last_error or "")


def test_unserialisable_result_fails_the_job(app: crashonly.App) -> None:
    @app.task(max_attempts=1)
    def returns_object() -> object:
        return object()

    handle = returns_object.enqueue()
    app.drain()
    with pytest.raises(crashonly.JobFailed, match="not JSON-serialisable"):
        handle.wait(1)


def test_transactional_task_commits_with_its_ack(app: crashonly.App) -> None:
    needs(app, "transactional")
    with app.backend.transaction() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS contract_effects (n INTEGER)")

    @app.task(transactional=True, max_attempts=2)
    def effect(n: int) -> int:
        crashonly.current_job().db.execute(f"INSERT INTO contract_effects VALUES ({int(n)})")
        if n < 0:
            raise ValueError("after the write: must roll back")
        return n

    ok, bad = effect.enqueue(5), effect.enqueue(-1)
    app.drain()
    assert ok.wait(1) == 5
    assert bad.job.state is not JobState.DONE
    with app.backend.transaction() as conn:
        rows = conn.execute("SELECT n FROM contract_effects ORDER BY n").fetchall()
    assert [r[0] for r in rows] == [5]


def test_transactional_task_with_a_stale_token_rolls_back(app: crashonly.App, clock: FakeClock) -> None:
    needs(app, "transactional")
    with app.backend.transaction() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS contract_effects (n INTEGER)")
    [job_id] = app.backend.put([NewJob(task="x", queue="default", payload='{"args":[],"kwargs":{}}',
                                       run_at=clock.now, lease=5)], now=clock.now)
    [r], _ = app.backend.reserve(worker_id="w", queues=["default"], limit=1, now=clock.now)
    clock.advance(6)
    app.recover()  # the lease expired: the job is someone else's now

    def write(conn: object) -> str:
        conn.execute("INSERT INTO contract_effects VALUES (99)")  # type: ignore[attr-defined]
        return "1"

    with pytest.raises(crashonly.StaleLease):
        app.backend.run_transactional(r, write, clock=clock)
    with app.backend.transaction() as conn:
        assert conn.execute("SELECT count(*) FROM contract_effects").fetchone()[0] == 0
    assert app.get_job(job_id).state is JobState.READY


def test_handle_wait_times_out(app: crashonly.App) -> None:
    handle = app.enqueue("never.runs")
    with pytest.raises(crashonly.JobTimeout):
        handle.wait(timeout=0.05)


def test_sync_job_that_ends_after_its_timeout_fails(app: crashonly.App) -> None:
    import time

    @app.task(timeout=0.01, max_attempts=1)
    def slow() -> str:
        time.sleep(0.05)
        return "late"

    handle = slow.enqueue()
    app.drain()
    with pytest.raises(crashonly.JobFailed, match="over its timeout"):
        handle.wait(1)


def test_async_job_is_cancelled_at_its_timeout(app: crashonly.App) -> None:
    @app.task(timeout=0.05, max_attempts=1)
    async def forever() -> None:
        await asyncio.sleep(60)

    handle = forever.enqueue()
    app.drain()
    with pytest.raises(crashonly.JobFailed, match="timeout"):
        handle.wait(1)
