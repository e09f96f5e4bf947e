"""arq on Redis; ``max_jobs`` from ``BENCH_ARQ_MAX_JOBS`` (1 = concurrency 1)."""

import asyncio
import os
import time
from typing import Any

from arq.connections import RedisSettings


def _note(path: str, what: str) -> None:
    with open(path, "a") as f:
        f.write(f"{what} {time.time():.6f} {os.environ.get('BENCH_WORKER', os.getpid())}\n")


async def noop(ctx: dict[str, Any]) -> None:
    return None


async def mark(ctx: dict[str, Any], path: str) -> None:
    _note(path, "start")


async def work(ctx: dict[str, Any], path: str, seconds: float) -> None:
    _note(path, "start")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    _note(path, "end")


class WorkerSettings:
    functions = [noop, mark, work]  # noqa: RUF012
    redis_settings = RedisSettings.from_dsn(
        os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15"))
    max_jobs = int(os.environ.get("BENCH_ARQ_MAX_JOBS", "1"))
