"""The invariants a chaos run checks, each a :class:`Check` that holds or says what broke.

* **Probe jobs** (the default load): every job is done, none is left reserved, and the ledger
  holds exactly one committed run for each. A done job without a ledger row was acked without its
  effect (lost work); two rows mean its effect committed twice (duplicated work).
* **A user task** (``--task``): every job is done (at-least-once). Runs beyond the first are
  counted, not a violation — a plain task may run again after a crash — from the workers'
  ``started job=…`` lines and the job's recorded deaths (a lower bound: a SIGKILLed worker's last
  unflushed lines are lost with it).
* **HTTP**: a request that got no answer because the web process holding its connection was
  SIGKILLed is *expected* (nothing can save a request whose process vanished) and counted; any
  other failure — a reset at a SIGTERM (the web process did not drain), a 5xx, a timeout, a
  request that was only queued on the socket or held by another process — is a violation. The
  attribution is exact, not by time: the killer lists the connections the process holds (its
  process group frozen with SIGSTOP first) and the client records its own port.
* **Processes**: every SIGTERMed process exited within ``--stop-timeout``; the formation was
  whole again after the faults; ``up`` stopped everything at the end without SIGKILL.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..job import Job, JobState
from .record import Kill, Recording, Request, percentile

__all__ = ["Check", "Verdict", "check_http", "check_probe_jobs", "check_processes",
           "check_task_jobs", "http_split", "timings"]

SHOW = 8  # how many example ids a failed check names


@dataclass(frozen=True, kw_only=True, slots=True)
class Check:
    name: str
    ok: bool
    summary: str
    details: list[str] = field(default_factory=list)


@dataclass(kw_only=True, slots=True)
class Verdict:
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def add(self, check: Check) -> None:
        self.checks.append(check)


def _ids(ids: Iterable[int]) -> str:
    ordered = sorted(ids)
    more = f" and {len(ordered) - SHOW} more" if len(ordered) > SHOW else ""
    return ", ".join(map(str, ordered[:SHOW])) + more


def _state(job: Job | None) -> str:
    return "missing" if job is None else job.state.value


def _completion(jobs: dict[int, Job | None], ids: list[int], what: str) -> list[Check]:
    states = Counter(_state(jobs.get(i)) for i in ids)
    not_done = [i for i in ids if _state(jobs.get(i)) != "done"]
    details = []
    for state in ("ready", "scheduled", "reserved", "buried", "missing"):
        these = [i for i in not_done if _state(jobs.get(i)) == state]
        if these:
            details.append(f"{len(these)} {state}: job {_ids(these)}")
    for i in not_done[:3]:
        job = jobs.get(i)
        if job is not None and job.last_error:
            details.append(f"job {i} last error: {job.last_error.strip().splitlines()[-1][:160]}")
    done = states.get("done", 0)
    checks = [Check(
        name=f"every {what} job completed",
        ok=not not_done,
        summary=f"{done} of {len(ids)} done" + ("" if not not_done else
                                                f"; {len(not_done)} not done (lost)"),
        details=details,
    )]
    reserved = states.get("reserved", 0)
    checks.append(Check(name="none left reserved", ok=reserved == 0,
                        summary=f"{reserved} still reserved after the drain"))
    return checks


def check_probe_jobs(jobs: dict[int, Job | None], ids: list[int],
                     ledger: list[tuple[int, int, int]]) -> list[Check]:
    runs: dict[int, list[tuple[int, int]]] = {}
    for job_id, attempt, pid in ledger:
        runs.setdefault(job_id, []).append((attempt, pid))
    checks = _completion(jobs, ids, "probe")
    done = {i for i in ids if (j := jobs.get(i)) is not None and j.state is JobState.DONE}
    unrun = sorted(i for i in done if i not in runs)
    twice = sorted(i for i in ids if len(runs.get(i, ())) > 1)
    orphan = sorted(i for i in ids if i in runs and i not in done)
    details = []
    if unrun:
        details.append(f"{len(unrun)} acked as done but their effect never committed (lost "
                       f"work, e.g. acked before running): job {_ids(unrun)}")
    if twice:
        extra = sum(len(runs[i]) - 1 for i in twice)
        details.append(f"{len(twice)} committed their effect more than once ({extra} extra "
                       f"runs; duplicated work): job {_ids(twice)}")
        for i in twice[:3]:
            details.append(f"job {i} ran in " + ", ".join(f"pid {pid} (attempt {a})"
                                                          for a, pid in runs[i]))
    if orphan:
        details.append(f"{len(orphan)} committed their effect but are not done (the effect and "
                       f"the ack were not one transaction): job {_ids(orphan)}")
    exact = len(done) - len(set(twice) & done) - len(unrun)
    checks.append(Check(
        name="exactly once (ledger)", ok=not (unrun or twice or orphan),
        summary=f"{exact} of {len(ids)} jobs committed exactly one run; "
                f"{len(ledger)} ledger rows", details=details))
    return checks


def check_task_jobs(jobs: dict[int, Job | None], ids: list[int], starts: Counter[int],
                    task: str) -> tuple[list[Check], int, int]:
    """Checks, plus (jobs that ran more than once, extra runs)."""
    checks = _completion(jobs, ids, task)
    again = extra = 0
    for i in ids:
        job = jobs.get(i)
        runs = max(starts.get(i, 0), 1 + (job.deaths if job is not None else 0))
        if runs > 1:
            again += 1
            extra += runs - 1
    return checks, again, extra


def _cut_by_kill(request: Request, kills: list[Kill]) -> bool:
    """The killed process held this request's connection when the SIGKILL came (faults.py
    listed its connections with the process frozen; the client recorded its own port)."""
    if request.port is None:
        return False
    return any(kill.cut_ports is not None and request.port in kill.cut_ports
               and request.start <= kill.t <= request.end for kill in kills)


def http_split(requests: list[Request], kills: list[Kill], http_type: str
               ) -> tuple[list[Request], list[Request]]:
    """(failures in flight at a SIGKILL of a web process, every other failure)."""
    sudden = [k for k in kills if k.name.rsplit(".", 1)[0] == http_type
              and (k.signal == "KILL" or k.escalated)]
    expected, unexpected = [], []
    for r in requests:
        if not r.failed:
            continue
        if r.status is None and _cut_by_kill(r, sudden):
            expected.append(r)
        else:
            unexpected.append(r)
    return expected, unexpected


def check_http(requests: list[Request], kills: list[Kill], http_type: str) -> Check:
    expected, unexpected = http_split(requests, kills, http_type)
    answered = sum(1 for r in requests if not r.failed)
    details = []
    reasons = Counter((f"HTTP {r.status}" if r.status is not None else (r.error or "?").split(":")[0])
                      for r in unexpected)
    for reason, n in reasons.most_common():
        details.append(f"{n} times: {reason}")
    for r in unexpected[:5]:
        details.append(f"at {r.start:.2f} s: {r.error or f'HTTP {r.status}'} after "
                       f"{(r.end - r.start) * 1000:.0f} ms")
    return Check(
        name="HTTP requests answered", ok=not unexpected,
        summary=f"{answered} of {len(requests)} answered; {len(expected)} cut by a SIGKILL "
                f"(expected); {len(unexpected)} other failures",
        details=details)


def check_processes(recording: Recording, *, stop_timeout: float, restored: str | None,
                    up_code: int | None) -> list[Check]:
    checks = []
    escalated = [k for k in recording.kills if k.escalated]
    terms = [k for k in recording.kills if k.signal != "KILL"]
    checks.append(Check(
        name="SIGTERM honoured", ok=not escalated,
        summary=f"{len(terms) - len(escalated)} of {len(terms)} SIGTERMed processes exited within "
                f"{stop_timeout:g} s",
        details=[f"{k.name} (pid {k.pid}) ignored SIGTERM at {k.t:.2f} s: SIGKILLed after "
                 f"{stop_timeout:g} s" for k in escalated[:SHOW]]))
    checks.append(Check(name="formation restored after the faults", ok=restored is None,
                        summary="every slot ready again" if restored is None else restored))
    if up_code == 0:
        summary = "crashonly up stopped every process on SIGTERM"
    elif up_code is None:
        summary = "crashonly up did not stop in time and was killed"
    else:
        summary = f"crashonly up exited {up_code}: some process had to be SIGKILLed at the end"
    checks.append(Check(name="clean final stop", ok=up_code == 0, summary=summary))
    return checks


def timings(recording: Recording) -> dict[str, Any]:
    """Start-up, shutdown and back-in-service times, with p50/p99, per process type and overall."""
    out: dict[str, Any] = {}
    groups: dict[str, dict[str, list[float]]] = {}
    for p in recording.processes.values():
        g = groups.setdefault(p.type_name, {"startup": [], "shutdown": []})
        if p.ready_seconds is not None:
            g["startup"].append(p.ready_seconds)
        if p.stop_seconds is not None:
            g["shutdown"].append(p.stop_seconds)
    for k in recording.kills:
        if k.back is not None:
            groups.setdefault(k.name.rsplit(".", 1)[0], {"startup": [], "shutdown": []}) \
                .setdefault("back", []).append(k.back - k.t)
    every: dict[str, list[float]] = {"startup": [], "shutdown": [], "back": []}
    for name, g in sorted(groups.items()):
        out[name] = {}
        for metric, values in g.items():
            every.setdefault(metric, []).extend(values)
            out[name][metric] = _stats(values)
    out["all"] = {metric: _stats(values) for metric, values in every.items()}
    return out


def _stats(values: list[float]) -> dict[str, Any]:
    return {"n": len(values), "p50": percentile(values, 0.5), "p99": percentile(values, 0.99),
            "max": max(values) if values else None}
