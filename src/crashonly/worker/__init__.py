"""The worker process: ``crashonly worker MODULE:APP``."""

from __future__ import annotations

from .process import Worker, WorkerConfig

__all__ = ["Worker", "WorkerConfig"]
