"""Huey on SQLite (``BENCH_HUEY_STORAGE=sqlite``, the default) or Redis.

SqliteStorage's defaults are WAL and, with ``fsync=None``, no ``synchronous`` pragma, so
SQLite's compiled default applies: FULL (2) in the stock build. ``fsync=True`` sets FULL
explicitly, the same durability as crashonly's default.
"""

import os
import time

from huey import RedisHuey, SqliteHuey

if os.environ.get("BENCH_HUEY_STORAGE", "sqlite") == "redis":
    huey = RedisHuey("bench", url=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15"))
else:
    huey = SqliteHuey("bench", filename=os.environ.get("BENCH_HUEY_DB", "huey.db"), fsync=True)


def _note(path: str, what: str) -> None:
    with open(path, "a") as f:
        f.write(f"{what} {time.time():.6f} {os.environ.get('BENCH_WORKER', os.getpid())}\n")


@huey.task()
def noop() -> None:
    return None


@huey.task()
def mark(path: str) -> None:
    _note(path, "start")


@huey.task()
def work(path: str, seconds: float) -> None:
    _note(path, "start")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.01)
    _note(path, "end")
