"""The app PostgreSQL worker tests run: its transactional task writes through psycopg."""

from __future__ import annotations

import os
import time

import crashonly

app = crashonly.App(os.environ.get("DATABASE_URL"))


@app.task
def noop() -> None:
    return None


@app.task
def stamp() -> float:
    """Returns when it started (wall clock), for enqueue-to-start latency."""
    return time.time()


@app.task(transactional=True, max_attempts=50)
def effect(key: str, sleep: float = 0.0) -> str:
    """Writes one row per committed run: the effects table counts how often it committed."""
    job = crashonly.current_job()
    job.db.execute("INSERT INTO effects (key, job, pid) VALUES (%s, %s, %s)",
                   (key, job.id, os.getpid()))
    if sleep:
        time.sleep(sleep)
    return key


@app.task(max_attempts=10, lease=30)
def sleeper(seconds: float, marker: str = "") -> str:
    """Ignores cancellation; appends a line to ``marker`` when it starts."""
    if marker:
        with open(marker, "a") as f:
            f.write(f"{os.getpid()} {time.time()}\n")
    time.sleep(seconds)
    return "slept"
