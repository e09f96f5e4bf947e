"""RQ: plain functions; the harness enqueues them by dotted path (``rq_app.noop``)."""

import os
import time


def _note(path: str, what: str) -> None:
    with open(path, "a") as f:
        f.write(f"{what} {time.time():.6f} {os.environ.get('BENCH_WORKER', os.getpid())}\n")


def noop() -> None:
    return None


def mark(path: str) -> None:
    _note(path, "start")


def work(path: str, seconds: float) -> None:
    _note(path, "start")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.01)
    _note(path, "end")
