"""crashonly: the queue in SQLite (``DATABASE_URL``), durability FULL unless the URL says not."""

import os
import time

import crashonly

app = crashonly.App(os.environ.get("DATABASE_URL"))


def _note(path: str, what: str) -> None:
    with open(path, "a") as f:
        f.write(f"{what} {time.time():.6f} {os.environ.get('BENCH_WORKER', os.getpid())}\n")


@app.task
def noop() -> None:
    return None


@app.task(max_attempts=10)
def mark(path: str) -> None:
    _note(path, "start")


@app.task(max_attempts=10)
def work(path: str, seconds: float) -> None:
    _note(path, "start")
    job = crashonly.current_job()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        job.check_cancelled()  # raises crashonly.Cancelled once the worker got SIGTERM
        time.sleep(0.01)
    _note(path, "end")
