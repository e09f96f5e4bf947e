"""The blame policy alone (crashonly/blame.py): stalls, lone deaths, shared deaths."""

from __future__ import annotations

from crashonly.blame import Orphan, Verdict, judge


def orphan(job_id: int, worker: str | None, *, alive: bool = False, deaths: int = 0,
           attempts: int = 1, token: int = 7) -> Orphan:
    return Orphan(id=job_id, token=token, worker=worker, holder_alive=alive, deaths=deaths,
                  attempts=attempts, max_attempts=5)


def verdicts(*orphans: Orphan) -> dict[int, Verdict]:
    return {o.id: v for o, v, _ in judge(orphans, poison_after=3)}


def test_a_live_holder_stalled_nobody_is_blamed() -> None:
    assert verdicts(orphan(1, "w", alive=True, deaths=2, attempts=5)) == {1: Verdict.STALLED}


def test_a_dead_holder_of_one_job_blames_it() -> None:
    assert verdicts(orphan(1, "w")) == {1: Verdict.BLAMED}
    assert verdicts(orphan(1, "w", deaths=2)) == {1: Verdict.BURIED}
    assert verdicts(orphan(1, "w", attempts=5)) == {1: Verdict.BURIED}


def test_a_dead_holder_of_several_jobs_blames_none_whatever_their_claims() -> None:
    got = verdicts(orphan(1, "w", token=1), orphan(2, "w", token=2, deaths=2), orphan(3, "v"))
    assert got == {1: Verdict.SUSPECT, 2: Verdict.SUSPECT, 3: Verdict.BLAMED}


def test_a_holder_that_stopped_gracefully_is_blamed_for_nothing() -> None:
    stopped = Orphan(id=1, token=7, worker="w", holder_alive=False, holder_stopped=True,
                     deaths=2, attempts=5, max_attempts=5)  # a death would bury it twice over
    assert verdicts(stopped) == {1: Verdict.STOPPED}
