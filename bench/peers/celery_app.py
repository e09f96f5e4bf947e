"""Celery on Redis, defaults otherwise (early ack, no result backend)."""

import os
import time

from celery import Celery

app = Celery("celery_app", broker=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15"))
app.conf.broker_connection_retry_on_startup = True


def _note(path: str, what: str) -> None:
    with open(path, "a") as f:
        f.write(f"{what} {time.time():.6f} {os.environ.get('BENCH_WORKER', os.getpid())}\n")


@app.task
def noop() -> None:
    return None


@app.task
def mark(path: str) -> None:
    _note(path, "start")


@app.task
def work(path: str, seconds: float) -> None:
    _note(path, "start")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.01)
    _note(path, "end")
