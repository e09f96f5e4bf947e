"""``current_job()``: what a running job may know about itself."""

from __future__ import annotations

import contextvars
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from typing import Any

from .errors import Cancelled, CrashonlyError

__all__ = ["JobContext", "current_job"]

_current: contextvars.ContextVar[JobContext] = contextvars.ContextVar("crashonly_job")


@dataclass(kw_only=True, slots=True)
class JobContext:
    """Handed to a running job through :func:`current_job`.

    ``scratch`` is a temporary directory that exists for this attempt only and is removed
    afterwards whatever the outcome (P3): the next attempt may run on another machine.
    ``db`` is, for transactional tasks, the DB-API connection of the transaction that also marks
    the job done: write through it and your writes commit with the ack, or not at all.
    """

    id: int
    task: str
    queue: str
    attempt: int
    max_attempts: int
    idempotency_key: str
    cancelled: threading.Event = field(default_factory=threading.Event)
    db: Any = None
    _scratch: str | None = None

    @property
    def scratch(self) -> str:
        """Created on first use (most jobs never need one: a mkdir and rmtree per job would
        cost a tenth of a no-op job's time), removed after the attempt."""
        if self._scratch is None:
            self._scratch = tempfile.mkdtemp(prefix=f"crashonly-job-{self.id}-")
        return self._scratch

    def remove_scratch(self) -> None:
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def check_cancelled(self) -> None:
        """Raise :class:`crashonly.Cancelled` if the worker is shutting down."""
        if self.cancelled.is_set():
            raise Cancelled()


def current_job() -> JobContext:
    """The job running in this thread or task; raises outside a job."""
    try:
        return _current.get()
    except LookupError:
        raise CrashonlyError("current_job() called outside a running job") from None


def _enter(ctx: JobContext) -> contextvars.Token[JobContext]:
    return _current.set(ctx)


def _exit(token: contextvars.Token[JobContext]) -> None:
    _current.reset(token)
