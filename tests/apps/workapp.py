"""A test app for worker process tests. Behaviour is steered by job arguments."""

from __future__ import annotations

import asyncio
import os
import time

import crashonly

_SKEW = float(os.environ.get("WORKAPP_CLOCK_SKEW", "0"))  # a machine whose clock is wrong
app = crashonly.App(os.environ.get("DATABASE_URL"), clock=lambda: time.time() + _SKEW)


@app.task
def noop() -> None:
    return None


@app.task(transactional=True, max_attempts=20)
def effect(key: str, sleep: float = 0.0) -> str:
    """Writes one row per run: the effects table counts how often it committed."""
    db = crashonly.current_job().db
    db.execute("CREATE TABLE IF NOT EXISTS effects (key TEXT, job INTEGER, pid INTEGER)")
    db.execute("INSERT INTO effects VALUES (?, ?, ?)", (key, crashonly.current_job().id, os.getpid()))
    if sleep:
        time.sleep(sleep)
    return key


@app.task(max_attempts=10)
def cooperative(seconds: float, marker: str = "") -> str:
    """Works in small steps and gives up when the worker shuts down."""
    job = crashonly.current_job()
    if marker:
        with open(marker, "a") as f:
            f.write(f"{os.getpid()} start {job.attempt}\n")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        job.check_cancelled()
        time.sleep(0.01)
    return "done"


@app.task(transactional=True, max_attempts=10)
def stubborn(seconds: float, key: str = "stubborn") -> str:
    """Ignores cancellation; writes its effect first, then sleeps inside the transaction."""
    db = crashonly.current_job().db
    db.execute("CREATE TABLE IF NOT EXISTS effects (key TEXT, job INTEGER, pid INTEGER)")
    db.execute("INSERT INTO effects VALUES (?, ?, ?)", (key, crashonly.current_job().id, os.getpid()))
    time.sleep(seconds)
    return "finished"


@app.task(transactional=True, max_attempts=3)
def two_writes(key: str, seconds: float) -> str:
    """Writes, sleeps inside its transaction, then writes again."""
    db, job_id = crashonly.current_job().db, crashonly.current_job().id
    db.execute("CREATE TABLE IF NOT EXISTS effects (key TEXT, job INTEGER, pid INTEGER)")
    db.execute("INSERT INTO effects VALUES (?, ?, ?)", (f"{key}-before", job_id, os.getpid()))
    time.sleep(seconds)
    db.execute("INSERT INTO effects VALUES (?, ?, ?)", (f"{key}-after", job_id, os.getpid()))
    return key


@app.task(max_attempts=10, lease=30)
def sleeper(seconds: float, marker: str = "") -> str:
    """Ignores cancellation (plain sleep); writes a marker line when it starts."""
    if marker:
        with open(marker, "a") as f:
            f.write(f"{os.getpid()} start\n")
    time.sleep(seconds)
    return "slept"


@app.task
async def async_sleep(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "async done"


_in_flight = 0


@app.task
async def crowd(seconds: float) -> int:
    """Returns how many crowd jobs were running in this process at its busiest moment."""
    global _in_flight
    _in_flight += 1
    try:
        peak = _in_flight
        await asyncio.sleep(seconds)
        return max(peak, _in_flight)
    finally:
        _in_flight -= 1
