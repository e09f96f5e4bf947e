"""What a job may hold: the limits every backend can store, checked before anything is written.

A value a backend cannot store must fail at enqueue, as an :class:`InvalidJob` naming the
option, never later as a driver error (an index row too large reads as an outage on
PostgreSQL, an integer overflow as a raw ``OverflowError`` on SQLite) or as a job that can never
run (a NaN ``run_at`` compares false with every clock). The numbers are in docs/queue.md.
"""

from __future__ import annotations

import math
from typing import Any

from .errors import InvalidJob

__all__ = [
    "MAX_KEY",
    "MAX_NAME",
    "MAX_SECONDS",
    "MAX_TIME",
    "PRIORITY_RANGE",
    "flag",
    "name",
    "run_at",
    "seconds",
    "whole",
]

# Task and queue names and unique keys sit in PostgreSQL btree indexes, whose rows are capped
# at 2704 bytes: 200 + 400 characters of at most 4 bytes each stay under it with room to spare.
MAX_NAME = 200
MAX_KEY = 400
PRIORITY_RANGE = (-(2**31), 2**31 - 1)  # PostgreSQL's integer (SQLite's is wider)
MAX_TIME = 253402300799.0  # 9999-12-31T23:59:59Z: a run_at past it is a bug, not a plan
MAX_SECONDS = 10 * 366 * 86400.0  # ten years: delays, leases, timeouts, key windows


def name(value: Any, field: str, limit: int = MAX_NAME) -> str:
    """A task name, queue name or unique key: non-empty text, at most ``limit`` characters,
    storable as UTF-8 (no lone surrogate) and as PostgreSQL text (no NUL)."""
    if not isinstance(value, str):
        raise InvalidJob(f"{field} must be a string, not {type(value).__name__} ({value!r:.60})")
    if not value:
        raise InvalidJob(f"{field} must not be empty")
    if len(value) > limit:
        hint = "; hash a long key (hashlib.sha256(...).hexdigest())" if limit == MAX_KEY else ""
        raise InvalidJob(
            f"{field} is {len(value)} characters long, over the limit of {limit} "
            f"({value[:40]!r}...){hint}"
        )
    if "\0" in value:
        raise InvalidJob(
            f"{field} contains a NUL character, which no backend stores: {value!r:.80}"
        )
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError as exc:
            raise InvalidJob(
                f"{field} contains a lone surrogate ({value[exc.start]!r} at position "
                f"{exc.start}), which cannot be stored as UTF-8: {value!r:.80}"
            ) from None
    return value


def whole(value: Any, field: str, lo: int, hi: int) -> int:
    """A whole number from ``lo`` to ``hi`` (bools and floats refused: ``priority=True`` or
    ``2.5`` is a mistake, not a priority)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidJob(
            f"{field} must be a whole number, not {type(value).__name__} ({value!r:.60})"
        )
    if not lo <= value <= hi:
        raise InvalidJob(f"{field} must be from {lo} to {hi}, not {value}")
    return int(value)


def seconds(value: Any, field: str, *, lo: float = 0.0, hi: float = MAX_SECONDS) -> float:
    """A finite number of seconds from ``lo`` to ``hi`` (NaN and infinities refused)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidJob(
            f"{field} must be a number of seconds, not {type(value).__name__} ({value!r:.60})"
        )
    number = float(value)
    if not math.isfinite(number) or not lo <= number <= hi:
        raise InvalidJob(
            f"{field} must be a finite number of seconds from {lo:g} to {hi:g}, not {value!r}"
        )
    return number


def flag(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidJob(f"{field} must be True or False, not {value!r:.60}")
    return value


def run_at(at: Any, delay: Any, now: float) -> float:
    """When a job may first run: ``at`` (seconds since the epoch) or ``now + delay``. A
    negative delay means now, as it always has."""
    if at is not None:
        return seconds(at, "run_at", lo=-MAX_TIME, hi=MAX_TIME)
    if delay is None:
        return now
    return now + max(0.0, seconds(delay, "delay", lo=-math.inf))
