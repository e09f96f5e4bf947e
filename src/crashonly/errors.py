"""Errors raised by crashonly.

Every error a user can meet derives from :class:`CrashonlyError`; messages say what failed and
what to do next. Driver errors (``sqlite3``, ``psycopg``) are translated at the backend boundary
with ``raise … from exc``.

::

    CrashonlyError
    ├── ConfigError            bad URL, unknown scheme, bad option value
    ├── BackendError           the backing service refused or failed
    │   ├── BackendUnavailable     cannot connect / file missing / locked / read-only
    │   └── SchemaError            database written by a newer (or foreign) schema
    ├── SerializationError     an argument or result is not JSON-serialisable
    ├── InvalidJob             an enqueue option no backend can store (also a ValueError)
    ├── UnknownTask            no task registered under that name
    ├── JobNotFound            no job with that id
    ├── StaleLease             ack/release/touch/fail with a token that is no longer current
    ├── JobFailed              handle.wait(): the job was buried; carries its last error
    └── JobTimeout             handle.wait(): the job did not finish in time

Control-flow signals raised *inside* a job are not errors of crashonly:

* :class:`Retry` (an ``Exception``): ask for another attempt, optionally after ``delay`` seconds.
* :class:`Cancelled` (a ``BaseException``, like ``trio.Cancelled``, so a broad ``except Exception``
  in user code cannot swallow it): the worker is shutting down; the job is released, not failed.
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "BackendUnavailable",
    "Cancelled",
    "ConfigError",
    "CrashonlyError",
    "InvalidJob",
    "JobFailed",
    "JobNotFound",
    "JobTimeout",
    "Retry",
    "SchemaError",
    "SerializationError",
    "StaleLease",
    "UnknownTask",
]


class CrashonlyError(Exception):
    """Root of every error crashonly raises."""


class ConfigError(CrashonlyError):
    """A URL, option or environment variable has a value crashonly cannot use."""


class BackendError(CrashonlyError):
    """The backing service failed an operation."""


class BackendUnavailable(BackendError):
    """The backing service cannot be reached or opened (missing, locked, read-only, down)."""


class SchemaError(BackendError):
    """The database holds a schema this version of crashonly cannot use."""


class SerializationError(CrashonlyError):
    """A job argument or result cannot be encoded as JSON."""


class InvalidJob(CrashonlyError, ValueError):
    """An enqueue option has a value no backend can store or run (a NaN ``run_at``, a priority
    out of range, an over-long queue name or unique key); the message names the option."""


class UnknownTask(CrashonlyError):
    """No task is registered under the given name."""


class JobNotFound(CrashonlyError):
    """No job exists with the given id (it may have been purged after its retention period)."""


class StaleLease(CrashonlyError):
    """The reservation token is no longer current: the lease expired and the job was handed
    to someone else, or the job was released, acked or deleted meanwhile. Nothing was changed."""


class JobFailed(CrashonlyError):
    """The job was buried; ``error`` is its last error (with traceback when it had one)."""

    def __init__(self, job_id: int, error: str | None) -> None:
        self.job_id = job_id
        self.error = error
        first = (error or "no error recorded").strip().splitlines()
        super().__init__(f"job {job_id} failed: {first[-1] if first else error}")


class JobTimeout(CrashonlyError):
    """``handle.wait()`` gave up before the job finished; the job itself goes on."""


class Retry(Exception):
    """Raised by a task to ask for another attempt, after ``delay`` seconds if given."""

    def __init__(self, delay: float | None = None, reason: str = "retry requested") -> None:
        super().__init__(reason)
        self.delay = delay
        self.reason = reason


class Cancelled(BaseException):
    """Raised by a sync task that saw ``current_job().cancelled``: the worker releases the job."""
