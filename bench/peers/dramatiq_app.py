"""Dramatiq on Redis, default middleware."""

import os
import time

import dramatiq
from dramatiq.brokers.redis import RedisBroker

broker = RedisBroker(url=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15"))
dramatiq.set_broker(broker)


def _note(path: str, what: str) -> None:
    with open(path, "a") as f:
        f.write(f"{what} {time.time():.6f} {os.environ.get('BENCH_WORKER', os.getpid())}\n")


@dramatiq.actor
def noop() -> None:
    return None


@dramatiq.actor
def mark(path: str) -> None:
    _note(path, "start")


@dramatiq.actor
def work(path: str, seconds: float) -> None:
    _note(path, "start")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.01)
    _note(path, "end")
