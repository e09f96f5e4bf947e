"""The job life cycle, verb by verb, against every backend (docs/design.md)."""

from __future__ import annotations

import os
import socket

import pytest

import crashonly
from crashonly.backends import WorkerInfo
from crashonly.job import JobState, NewJob, Settlement, SettlementKind
from tests.semantics.conftest import FakeClock, needs

W = "contract-worker"


@pytest.fixture(autouse=True)
def registered(app: crashonly.App, clock: FakeClock) -> None:
    """The holder of the reservations below is alive: only leases can expire."""
    app.backend.register_worker(WorkerInfo(id=W, host=socket.gethostname(), pid=os.getpid(),
                                           started_at=clock.now, heartbeat_at=clock.now))


def new(task: str = "t", *, queue: str = "default", priority: int = 100, run_at: float,
        max_attempts: int = 5, lease: float = 30.0, unique_key: str | None = None,
        payload: str = '{"args":[],"kwargs":{}}') -> NewJob:
    return NewJob(task=task, queue=queue, payload=payload, priority=priority, run_at=run_at,
                  max_attempts=max_attempts, lease=lease, unique_key=unique_key)


def put(app: crashonly.App, clock: FakeClock, n: int = 1, **kw: object) -> list[int]:
    return app.backend.put([new(run_at=clock.now, **kw) for _ in range(n)], now=clock.now)  # type: ignore[arg-type]


def reserve(app: crashonly.App, clock: FakeClock, limit: int = 10, queues: tuple[str, ...] = ("default",),
            settle: list[Settlement] | None = None):  # type: ignore[no-untyped-def]
    return app.backend.reserve(worker_id=W, queues=queues, limit=limit, now=clock.now,
                               settle=settle or [])


def ack(r, result: str = "1") -> Settlement:  # type: ignore[no-untyped-def]
    return Settlement(job_id=r.job.id, token=r.token, kind=SettlementKind.ACK, result=result)


def test_put_then_get(app: crashonly.App, clock: FakeClock) -> None:
    [job_id] = put(app, clock, priority=7)
    job = app.get_job(job_id)
    assert job.state is JobState.READY
    assert (job.priority, job.attempts, job.queue, job.task) == (7, 0, "default", "t")
    assert job.created_at == clock.now and job.lease_expires_at is None


def test_ids_are_distinct_and_in_order(app: crashonly.App, clock: FakeClock) -> None:
    ids = put(app, clock, 50)
    assert len(set(ids)) == 50 and ids == sorted(ids)
    assert [app.get_job(i).id for i in ids] == ids


def test_each_job_is_reserved_once(app: crashonly.App, clock: FakeClock) -> None:
    ids = put(app, clock, 25)
    first, _ = reserve(app, clock, limit=10)
    second, _ = reserve(app, clock, limit=100)
    got = [r.job.id for r in first + second]
    assert sorted(got) == ids
    assert all(r.job.state is JobState.RESERVED and r.job.attempts == 1 for r in first)
    assert reserve(app, clock)[0] == []


def test_priority_then_age(app: crashonly.App, clock: FakeClock) -> None:
    needs(app, "priorities")
    low = put(app, clock, priority=200)[0]
    clock.advance(1)
    high_later = put(app, clock, priority=1)[0]
    mid = put(app, clock, priority=100)[0]
    got, _ = reserve(app, clock)
    assert [r.job.id for r in got] == [high_later, mid, low]


def test_queues_are_separate(app: crashonly.App, clock: FakeClock) -> None:
    mail = put(app, clock, queue="mail")[0]
    put(app, clock, queue="default")
    got, _ = reserve(app, clock, queues=("mail",))
    assert [r.job.id for r in got] == [mail]


def test_ack_marks_done_with_result(app: crashonly.App, clock: FakeClock) -> None:
    put(app, clock)
    [r], _ = reserve(app, clock)
    assert app.backend.settle([ack(r, '{"x":1}')], now=clock.now) == []
    job = app.get_job(r.job.id)
    assert job.state is JobState.DONE and job.result == {"x": 1}


def test_settlements_fold_into_the_next_claim(app: crashonly.App, clock: FakeClock) -> None:
    put(app, clock, 4)
    batch, _ = reserve(app, clock, limit=2)
    nxt, refused = reserve(app, clock, limit=2, settle=[ack(r) for r in batch])
    assert refused == [] and len(nxt) == 2
    assert all(app.get_job(r.job.id).state is JobState.DONE for r in batch)


def test_release_returns_job_without_counting_an_attempt(app: crashonly.App, clock: FakeClock) -> None:
    put(app, clock)
    [r], _ = reserve(app, clock)
    rel = Settlement(job_id=r.job.id, token=r.token, kind=SettlementKind.RELEASE)
    assert app.backend.settle([rel], now=clock.now) == []
    job = app.get_job(r.job.id)
    assert job.state is JobState.READY and job.attempts == 0 and job.worker is None
    [again], _ = reserve(app, clock)
    assert again.job.id == r.job.id and again.job.attempts == 1


def test_fail_schedules_a_retry_then_buries(app: crashonly.App, clock: FakeClock) -> None:
    [job_id] = put(app, clock, max_attempts=2)
    [r], _ = reserve(app, clock)
    fail = Settlement(job_id=job_id, token=r.token, kind=SettlementKind.FAIL, error="boom", delay=5)
    app.backend.settle([fail], now=clock.now)
    job = app.get_job(job_id)
    assert job.state is JobState.SCHEDULED and job.attempts == 1 and job.last_error == "boom"
    assert reserve(app, clock)[0] == []  # not before its delay
    clock.advance(5.01)
    [r2], _ = reserve(app, clock)
    assert r2.job.attempts == 2
    fail2 = Settlement(job_id=job_id, token=r2.token, kind=SettlementKind.FAIL, error="boom2", delay=5)
    app.backend.settle([fail2], now=clock.now)
    job = app.get_job(job_id)
    assert job.state is JobState.BURIED and job.last_error == "boom2"


def test_bury_and_kick(app: crashonly.App, clock: FakeClock) -> None:
    put(app, clock)
    [r], _ = reserve(app, clock)
    bury = Settlement(job_id=r.job.id, token=r.token, kind=SettlementKind.BURY, error="bad")
    app.backend.settle([bury], now=clock.now)
    assert app.get_job(r.job.id).state is JobState.BURIED
    assert app.retry(r.job.id) is True
    job = app.get_job(r.job.id)
    assert job.state is JobState.READY and job.attempts == 0
    assert app.retry(r.job.id) is False  # not buried any more


def test_retry_all_buried(app: crashonly.App, clock: FakeClock) -> None:
    ids = put(app, clock, 3)
    for i in ids:
        assert app.backend.bury(i, "admin", now=clock.now)
    assert app.retry_all_buried() == 3
    assert {app.get_job(i).state for i in ids} == {JobState.READY}


def test_stale_token_is_refused_and_changes_nothing(app: crashonly.App, clock: FakeClock) -> None:
    needs(app, "fencing")
    put(app, clock, lease=10)
    [old], _ = reserve(app, clock)
    clock.advance(11)
    app.recover()
    [new_], _ = reserve(app, clock)
    assert new_.job.id == old.job.id and new_.token != old.token
    assert app.backend.settle([ack(old, '"stale"')], now=clock.now) == [old.job.id]
    assert app.backend.touch([(old.job.id, old.token)], now=clock.now) == [old.job.id]
    rel = Settlement(job_id=old.job.id, token=old.token, kind=SettlementKind.RELEASE)
    assert app.backend.settle([rel], now=clock.now) == [old.job.id]
    assert app.get_job(old.job.id).state is JobState.RESERVED
    assert app.backend.settle([ack(new_, '"fresh"')], now=clock.now) == []
    assert app.get_job(old.job.id).result == "fresh"


def test_touch_extends_the_lease(app: crashonly.App, clock: FakeClock) -> None:
    put(app, clock, lease=10)
    [r], _ = reserve(app, clock)
    clock.advance(8)
    assert app.backend.touch([(r.job.id, r.token)], now=clock.now) == []
    clock.advance(8)  # 16 s after the claim, 8 after the touch
    app.recover()
    assert app.get_job(r.job.id).state is JobState.RESERVED
    clock.advance(3)
    app.recover()
    assert app.get_job(r.job.id).state is JobState.READY


def test_expired_lease_of_a_live_holder_is_a_stall_not_a_death(
    app: crashonly.App, clock: FakeClock,
) -> None:
    put(app, clock, lease=5, max_attempts=1)
    [r], _ = reserve(app, clock)
    clock.advance(6)  # W is still registered: it stalled (SIGSTOP, a VM pause), nothing died
    report = app.recover()
    assert r.job.id in report.requeued and not report.buried
    job = app.get_job(r.job.id)
    assert job.state is JobState.READY and job.attempts == 1 and job.deaths == 0
    assert app.backend.settle([ack(r)], now=clock.now) == [r.job.id]  # the late ack is refused


def test_expired_lease_of_a_dead_holder_requeues_and_counts(
    app: crashonly.App, clock: FakeClock,
) -> None:
    put(app, clock, lease=5)
    [r], _ = reserve(app, clock)
    app.backend.deregister_worker(W)  # as recovery does once it finds a holder dead
    clock.advance(6)
    report = app.recover()
    assert r.job.id in report.requeued
    job = app.get_job(r.job.id)
    assert job.state is JobState.READY and job.attempts == 1 and job.deaths == 1


def test_poison_job_is_buried_after_three_deaths(app: crashonly.App, clock: FakeClock) -> None:
    [job_id] = put(app, clock, lease=5, max_attempts=10)
    app.backend.deregister_worker(W)  # each claim below is a holder that then dies
    for death in range(1, 4):
        reserve(app, clock)
        clock.advance(6)
        report = app.recover()
        if death < 3:
            assert job_id in report.requeued
    assert job_id in report.buried
    job = app.get_job(job_id)
    assert job.state is JobState.BURIED and "poison" in (job.last_error or "")


def test_jobs_held_together_are_not_blamed_and_run_alone_next(app: crashonly.App, clock: FakeClock) -> None:
    ids = put(app, clock, 3, lease=5)
    batch, _ = reserve(app, clock, limit=3)
    assert len(batch) == 3 and not any(r.alone for r in batch)
    app.backend.deregister_worker(W)
    clock.advance(6)
    app.recover()
    for i in ids:
        job = app.get_job(i)
        assert job.state is JobState.READY and job.deaths == 0 and job.attempts == 0
    got, _ = reserve(app, clock, limit=3)
    assert [r.job.id for r in got] == ids[:1]  # suspect: claimed alone
    assert got[0].alone  # and the worker is told to run it alone


def test_jobs_claimed_apart_but_held_together_are_not_blamed(
    app: crashonly.App, clock: FakeClock,
) -> None:
    """One process runs several separately claimed jobs at once: a death is blamed on a job
    only if it was the only one the dead holder held."""
    innocent, poison = put(app, clock, 2, lease=5)
    [a], _ = reserve(app, clock, limit=1)
    [b], _ = reserve(app, clock, limit=1)
    assert (a.job.id, b.job.id) == (innocent, poison)
    app.backend.deregister_worker(W)
    clock.advance(6)
    report = app.recover()
    assert sorted(report.requeued) == [innocent, poison] and not report.buried
    for job_id in (innocent, poison):
        job = app.get_job(job_id)
        assert job.deaths == 0 and job.attempts == 0


def test_success_resets_the_death_count(app: crashonly.App, clock: FakeClock) -> None:
    [job_id] = put(app, clock, lease=5)
    [r], _ = reserve(app, clock)
    app.backend.deregister_worker(W)
    clock.advance(6)
    app.recover()
    assert app.get_job(job_id).deaths == 1
    [r], _ = reserve(app, clock)
    app.backend.settle([Settlement(job_id=job_id, token=r.token, kind=SettlementKind.FAIL,
                                   error="x", delay=0)], now=clock.now)
    assert app.get_job(job_id).deaths == 0


def test_unique_key_while_not_done(app: crashonly.App, clock: FakeClock) -> None:
    needs_unique(app)
    a = put(app, clock, unique_key="k")[0]
    b = put(app, clock, unique_key="k")[0]
    other = put(app, clock, unique_key="k2")[0]
    assert a == b != other
    [r, _], _ = reserve(app, clock)
    app.backend.settle([ack(r)], now=clock.now)
    c = put(app, clock, unique_key="k")[0]
    assert c != a and app.get_job(c).state is JobState.READY


def test_unique_keys_in_one_batch(app: crashonly.App, clock: FakeClock) -> None:
    needs_unique(app)
    ids = app.backend.put([new(run_at=clock.now, unique_key=k) for k in ["a", "b", "a", None]],
                          now=clock.now)
    assert ids[0] == ids[2] and len(set(ids)) == 3


def test_scheduled_jobs_wait_for_run_at(app: crashonly.App, clock: FakeClock) -> None:
    [job_id] = app.backend.put([new(run_at=clock.now + 60)], now=clock.now)
    assert app.get_job(job_id).state is JobState.SCHEDULED
    assert reserve(app, clock)[0] == []
    clock.advance(61)
    app.recover()
    assert app.get_job(job_id).state is JobState.READY
    assert [r.job.id for r in reserve(app, clock)[0]] == [job_id]


def test_done_jobs_are_purged_after_retention(app: crashonly.App, clock: FakeClock) -> None:
    app.retention = 100
    [job_id] = put(app, clock)
    [r], _ = reserve(app, clock)
    app.backend.settle([ack(r)], now=clock.now)
    clock.advance(50)
    app.recover()
    assert app.get_job(job_id).state is JobState.DONE
    clock.advance(120)
    app.recover()
    with pytest.raises(crashonly.JobNotFound):
        app.get_job(job_id)


def test_stats_and_list(app: crashonly.App, clock: FakeClock) -> None:
    put(app, clock, 3)
    put(app, clock, 2, queue="mail")
    reserve(app, clock, limit=1)
    stats = app.stats()
    assert stats["default"]["ready"] == 2 and stats["default"]["reserved"] == 1
    assert stats["mail"] == {"scheduled": 0, "ready": 2, "reserved": 0, "done": 0, "buried": 0}
    assert len(app.list_jobs(queue="mail")) == 2
    assert len(app.list_jobs(state="reserved")) == 1
    assert len(app.list_jobs(limit=4)) == 4


def test_delete(app: crashonly.App, clock: FakeClock) -> None:
    [job_id] = put(app, clock)
    assert app.delete(job_id) is True
    assert app.delete(job_id) is False
    with pytest.raises(crashonly.JobNotFound):
        app.get_job(job_id)


def needs_unique(app: crashonly.App) -> None:
    from tests.semantics.conftest import needs

    needs(app, "unique_keys")
