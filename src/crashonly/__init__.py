"""crashonly: stateless, disposable processes for Python apps.

The core (this package minus ``backends.postgres``, ``web`` and the CLI's optional commands)
imports only the standard library.
"""

from __future__ import annotations

from .app import App, JobHandle, Task, TaskOptions
from .context import JobContext, current_job
from .errors import (
    BackendError,
    BackendUnavailable,
    Cancelled,
    ConfigError,
    CrashonlyError,
    InvalidJob,
    JobFailed,
    JobNotFound,
    JobTimeout,
    Retry,
    SchemaError,
    SerializationError,
    StaleLease,
    UnknownTask,
)
from .job import Job, JobState

__version__ = "0.1.0"

__all__ = [
    "App",
    "BackendError",
    "BackendUnavailable",
    "Cancelled",
    "ConfigError",
    "CrashonlyError",
    "InvalidJob",
    "Job",
    "JobContext",
    "JobFailed",
    "JobHandle",
    "JobNotFound",
    "JobState",
    "JobTimeout",
    "Retry",
    "SchemaError",
    "SerializationError",
    "StaleLease",
    "Task",
    "TaskOptions",
    "UnknownTask",
    "__version__",
    "current_job",
]
