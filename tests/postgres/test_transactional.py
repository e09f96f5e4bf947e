"""Transactional enqueue and transactional tasks: the job and the writes commit together."""

from __future__ import annotations

import threading

import psycopg
import pytest

import crashonly
from crashonly.job import JobState, NewJob
from tests.postgres.conftest import conninfo, create_effects, effects

pytestmark = pytest.mark.postgres


def _app(url: str) -> crashonly.App:
    app = crashonly.App(url)

    @app.task(name="effect", transactional=True, max_attempts=1)
    def effect(key: str, fail: bool = False) -> str:
        db = crashonly.current_job().db
        db.execute("INSERT INTO effects (key, job) VALUES (%s, %s)", (key, crashonly.current_job().id))
        if fail:
            raise ValueError("after the write: it must roll back")
        return key

    @app.task(name="plain")
    def plain() -> str:
        return "ok"

    return app


def test_enqueue_exists_only_if_the_callers_transaction_commits(pg_url: str) -> None:
    app = _app(pg_url)
    app.migrate()
    create_effects(pg_url)
    with psycopg.connect(conninfo(pg_url)) as conn:
        with conn.transaction(force_rollback=True):
            conn.execute("INSERT INTO effects (key) VALUES ('order-1')")
            gone = app.tasks["plain"].options(connection=conn).enqueue()
            # Inside the transaction the job is visible to it, and to nobody else yet.
            assert conn.execute("SELECT count(*) FROM effects").fetchone() == (1,)
            assert app.backend.get(gone.id) is None
        with conn.transaction():
            conn.execute("INSERT INTO effects (key) VALUES ('order-2')")
            kept = app.tasks["plain"].options(connection=conn).enqueue()
    assert app.backend.get(gone.id) is None
    assert app.get_job(kept.id).state is JobState.READY
    assert effects(pg_url) == {"order-2": 1}
    assert app.drain() == 1 and kept.wait(1) == "ok"
    app.close()


def test_enqueue_in_an_autocommit_connection_and_with_unique_keys(pg_url: str) -> None:
    app = _app(pg_url)
    with psycopg.connect(conninfo(pg_url), autocommit=True) as conn:
        first = app.tasks["plain"].options(connection=conn, unique_key="k").enqueue()
        again = app.tasks["plain"].options(connection=conn, unique_key="k").enqueue()
    assert first.id == again.id
    assert app.stats()["default"]["ready"] == 1
    app.close()


def test_a_foreign_connection_is_refused_with_advice(pg_url: str) -> None:
    app = _app(pg_url)
    with pytest.raises(crashonly.ConfigError, match="psycopg 3 connection"):
        app.tasks["plain"].options(connection=object()).enqueue()
    app.close()


def test_only_a_committed_enqueue_wakes_a_listener(pg_url: str) -> None:
    app = _app(pg_url)
    app.migrate()
    assert app.backend.wait_for_change(0.0) is True  # the first call starts listening
    with psycopg.connect(conninfo(pg_url)) as conn:
        with conn.transaction(force_rollback=True):
            app.tasks["plain"].options(connection=conn).enqueue()
        assert app.backend.wait_for_change(0.3) is False
        with conn.transaction():
            app.tasks["plain"].options(connection=conn).enqueue()
    assert app.backend.wait_for_change(5.0) is True
    app.close()


def test_task_writes_through_the_transaction_that_acks_it(pg_url: str) -> None:
    app = _app(pg_url)
    app.migrate()
    create_effects(pg_url)
    seen: dict[str, object] = {}

    @app.task(name="inspect", transactional=True)
    def inspect() -> None:
        db = crashonly.current_job().db
        seen["status"] = db.info.transaction_status
        # Through this very connection the job is still reserved: its ack is yet to come.
        seen["state"] = db.execute(
            f"SELECT state FROM {app.backend.schema}.jobs WHERE id = %s",  # type: ignore[attr-defined]
            (crashonly.current_job().id,),
        ).fetchone()[0]

    ok = app.tasks["effect"].enqueue("good")
    bad = app.tasks["effect"].enqueue("bad", fail=True)
    look = inspect.enqueue()
    app.drain()
    assert ok.wait(1) == "good"
    assert bad.job.state is JobState.BURIED and "must roll back" in (bad.job.last_error or "")
    look.wait(1)
    assert seen == {"status": psycopg.pq.TransactionStatus.INTRANS, "state": "reserved"}
    assert effects(pg_url) == {"good": 1}
    app.close()


def test_the_tasks_own_sql_error_is_its_error(pg_url: str) -> None:
    app = _app(pg_url)

    @app.task(name="broken", transactional=True, max_attempts=1)
    def broken() -> None:
        crashonly.current_job().db.execute("SELECT * FROM no_such_table")

    handle = broken.enqueue()
    app.drain()
    job = handle.job
    assert job.state is JobState.BURIED
    assert "UndefinedTable" in (job.last_error or "") and "crashonly.errors" not in (job.last_error or "")
    app.close()


def test_a_fenced_out_holder_never_commits_its_effects(pg_url: str) -> None:
    """The holder's lease expires while it runs; the job goes to another worker, which
    finishes first. The first holder's writes roll back: the effect happens exactly once."""
    clock_now = [1_800_000_000.0]
    app = crashonly.App(pg_url, clock=lambda: clock_now[0])
    app.migrate()
    create_effects(pg_url)
    backend = app.backend
    backend.store_clock = lambda: clock_now[0]  # type: ignore[attr-defined]  # leases: store time
    [job_id] = backend.put([NewJob(task="x", queue="default", payload='{"args":[],"kwargs":{}}',
                                   run_at=clock_now[0], lease=5)], now=clock_now[0])
    [first], _ = backend.reserve(worker_id="w1", queues=["default"], limit=1, now=clock_now[0])
    wrote, go_on = threading.Event(), threading.Event()
    outcome: list[BaseException | str | None] = []

    def slow(conn: psycopg.Connection) -> str:
        conn.execute("INSERT INTO effects (key, job) VALUES ('x', %s)", (job_id,))
        wrote.set()
        go_on.wait(10)
        return '"first"'

    def hold() -> None:
        try:
            outcome.append(backend.run_transactional(first, slow, clock=lambda: clock_now[0]))
        except BaseException as exc:
            outcome.append(exc)

    holder = threading.Thread(target=hold)
    holder.start()
    assert wrote.wait(10)
    clock_now[0] += 6
    assert job_id in app.recover().requeued  # w1 is not registered: its job is an orphan
    [second], _ = backend.reserve(worker_id="w2", queues=["default"], limit=1, now=clock_now[0])

    def quick(conn: psycopg.Connection) -> str:
        conn.execute("INSERT INTO effects (key, job) VALUES ('x', %s)", (job_id,))
        return '"second"'

    assert backend.run_transactional(second, quick, clock=lambda: clock_now[0]) == '"second"'
    go_on.set()
    holder.join(10)
    assert len(outcome) == 1 and isinstance(outcome[0], crashonly.StaleLease)
    assert effects(pg_url) == {"x": 1}
    assert app.get_job(job_id).result == "second"
    app.close()
