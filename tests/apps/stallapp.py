"""Tasks for the stall, blame and bad-data tests. Backend-neutral (no SQL of their own).

``register(app)`` declares them on any app, so a test's own producer enqueues them with the
same options (lease, attempts) as the worker that runs them."""

from __future__ import annotations

import ctypes
import os
import signal
import time

import crashonly

BAD_NAME = os.fsdecode(b"/data/\xff.csv")  # an everyday file name that is not UTF-8


def register(app: crashonly.App) -> None:
    @app.task(name="stallapp.steps", lease=3, max_attempts=10)
    def steps(seconds: float, marker: str = "") -> str:
        """Works in 10 ms steps (a paused process makes no progress), stops when cancelled."""
        job = crashonly.current_job()
        if marker:
            with open(marker, "a") as f:
                f.write(f"{os.getpid()} start {job.attempt}\n")
        for _ in range(int(seconds * 100)):
            job.check_cancelled()
            time.sleep(0.01)
        return "done"

    @app.task(name="stallapp.short", max_attempts=10)
    def short(seconds: float = 0.0) -> str:
        time.sleep(seconds)
        return "short"

    @app.task(name="stallapp.poison", max_attempts=10)
    def poison(delay: float = 0.0) -> None:
        """Kills the process running it, every time."""
        time.sleep(delay)
        os.kill(os.getpid(), signal.SIGKILL)

    @app.task(name="stallapp.hold_gil", lease=2, max_attempts=3)
    def hold_gil(seconds: float, marker: str = "") -> str:
        """One C call that keeps the GIL the whole time: ctypes releases the GIL around
        foreign calls, except through ``PyDLL`` (meant for the Python C API)."""
        if marker:
            with open(marker, "a") as f:
                f.write(f"{os.getpid()} start\n")
        ctypes.PyDLL(None).usleep(int(seconds * 1_000_000))
        return "held"

    @app.task(name="stallapp.missing_file", max_attempts=2, retry_backoff=0.05)
    def missing_file() -> None:
        raise FileNotFoundError(BAD_NAME)

    @app.task(name="stallapp.bad_result")
    def bad_result() -> str:
        return BAD_NAME

    @app.task(name="stallapp.enqueue_later", max_attempts=1)
    def enqueue_later(seconds: float) -> int:
        """Enqueues a follow-up after ``seconds``: meets the store's outage if there is one."""
        time.sleep(seconds)
        return app.tasks["stallapp.short"].enqueue().id

    @app.task(name="stallapp.tx_later", transactional=True, max_attempts=1)
    def tx_later(seconds: float) -> str:
        """Queries in its transaction after ``seconds``: meets the store's outage if any."""
        time.sleep(seconds)
        crashonly.current_job().db.execute("SELECT 1")
        return "committed"

    @app.task(name="stallapp.echo")
    def echo(value: object) -> object:
        return value


app = crashonly.App(os.environ.get("DATABASE_URL"))
register(app)
