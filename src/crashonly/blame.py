"""Blame: what recovery does with a reserved job whose holder is gone or late.

Decided once, here; a backend only fetches the orphans (with whether their holder is still
registered) and applies each verdict by its query of the same name (docs/design.md, "Blame").

* **Stalled.** The lease expired but the holder is still registered (its process is alive, as
  far as death detection can tell: a VM pause, SIGSTOP, a long GC): nothing died, so nobody is
  blamed and nothing is buried. The job goes back to ready with its attempt counted (it did
  start); the late holder's settlements are refused by the token.
* **Stopped.** The holder stopped gracefully but could not write to the store (a full disk)
  to hand its jobs back, and left a mark saying so (SQLite: ``<id>.stopped``, see
  :mod:`crashonly.liveness`): it is released as its own stop would have released it — no
  death, no attempt counted.
* **Blamed.** The holder died holding this job and no other. A worker runs a suspect job alone
  and claims nothing else meanwhile, so a job held alone was the only one running in the dead
  process: the death is its (``deaths + 1``), buried as poison at ``poison_after``; until
  then it stays a suspect (run alone), so each further death is blamed exactly too.
* **Suspect.** The holder died holding several jobs: which one (if any) killed it is unknown.
  None is blamed, their attempts are given back, and each is marked ``alone``: the next claim
  takes it by itself and the worker runs it with nothing beside it.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Orphan", "Verdict", "judge"]


class Verdict(enum.Enum):
    """What to do with an orphan; the value names the backend query that applies it."""

    STALLED = "requeue_stalled"
    STOPPED = "requeue_stopped"
    SUSPECT = "requeue_unblamed"
    BLAMED = "requeue_blamed"
    BURIED = "bury_orphan"


@dataclass(frozen=True, kw_only=True, slots=True)
class Orphan:
    id: int
    token: int
    worker: str | None
    holder_alive: bool  # the holder is still registered: a stall, not a death
    holder_stopped: bool = False  # it stopped gracefully, unable to release: not a death
    deaths: int
    attempts: int
    max_attempts: int


def judge(orphans: Sequence[Orphan], poison_after: int) -> list[tuple[Orphan, Verdict, str | None]]:
    """A verdict and the error to record for each orphan."""
    by_holder: dict[object, list[Orphan]] = {}
    for o in orphans:
        by_holder.setdefault(o.worker if o.worker is not None else ("token", o.token), []).append(o)
    out: list[tuple[Orphan, Verdict, str | None]] = []
    for held in by_holder.values():
        for o in held:
            if o.holder_alive:
                out.append((o, Verdict.STALLED, "its worker stalled past the lease; requeued"))
            elif o.holder_stopped:
                out.append((o, Verdict.STOPPED, (
                    "its worker stopped but could not write to the store to release it; "
                    "requeued")))
            elif len(held) > 1:
                out.append((o, Verdict.SUSPECT, None))
            elif o.deaths + 1 >= poison_after:
                out.append((o, Verdict.BURIED,
                            f"poison: the worker running it died {o.deaths + 1} times in a row"))
            elif o.attempts >= o.max_attempts:
                out.append((o, Verdict.BURIED, (
                    f"attempts exhausted ({o.attempts}/{o.max_attempts}); "
                    "the last holder died running it")))
            else:
                out.append((o, Verdict.BLAMED, "its worker died running it; requeued"))
    return out
