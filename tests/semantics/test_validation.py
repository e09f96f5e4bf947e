"""Enqueue refuses, with an error naming the option, what no backend can store or run
(crashonly.validation; limits in docs/queue.md) — on every backend, and stores nothing."""

from __future__ import annotations

import math
import os

import pytest

import crashonly
from crashonly import validation
from tests.semantics.conftest import OPTION_NEEDS, needs

BAD_OPTIONS = [
    ({"run_at": math.nan}, "run_at"),
    ({"run_at": math.inf}, "run_at"),
    ({"run_at": 1e300}, "run_at"),
    ({"delay": math.nan}, "delay"),
    ({"delay": -math.inf}, "delay"),
    ({"delay": "5"}, "delay"),
    ({"priority": 2**31}, "priority"),
    ({"priority": -(2**31) - 1}, "priority"),
    ({"priority": 2**70}, "priority"),
    ({"priority": 1.5}, "priority"),
    ({"queue": "q" * 8192}, "queue"),
    ({"queue": ""}, "queue"),
    ({"queue": "bad\udcffname"}, "queue"),
    ({"queue": "nul\0"}, "queue"),
    ({"unique_key": "k" * 1_000_000}, "unique_key"),
    ({"unique_key": "\udcff"}, "unique_key"),
    ({"unique_key": 42}, "unique_key"),
    ({"unique_after_done": math.inf}, "unique_after_done"),
    ({"unique_while_buried": "yes"}, "unique_while_buried"),
]


@pytest.mark.parametrize(("options", "field"), BAD_OPTIONS, ids=[f for _, f in BAD_OPTIONS])
def test_bad_options_are_refused_naming_the_option(
    app: crashonly.App, options: dict[str, object], field: str
) -> None:
    for option in options:
        needs(app, OPTION_NEEDS.get(option, ""))

    @app.task
    def t() -> None: ...

    with pytest.raises(crashonly.InvalidJob, match=field) as caught:
        t.options(**options).enqueue()  # type: ignore[arg-type]
    assert isinstance(caught.value, ValueError)
    assert len(str(caught.value)) < 300 and "\n" not in str(caught.value)
    with pytest.raises(crashonly.InvalidJob, match=field):
        app.enqueue_many([(t.name, [], {})], **options)
    assert app.stats() == {}


def test_a_lone_surrogate_in_an_argument_is_stored_and_comes_back(app: crashonly.App) -> None:
    """os.fsdecode of a non-UTF-8 file name gives lone surrogates: stored with JSON escapes,
    the task gets the very same string (names, queues and keys are refused instead)."""
    @app.task
    def load(path: str, *, mode: str = "r") -> None: ...

    name = os.fsdecode(b"/data/\xff.csv")  # an everyday non-UTF-8 file name
    handle = load.enqueue(name, mode=name)
    job = app.get_job(handle.id)
    assert job.args == [name] and job.kwargs == {"mode": name}
    assert os.fsencode(job.args[0]) == b"/data/\xff.csv"
    load.enqueue("/data/é.csv")  # non-ASCII text is fine


def test_the_limits_themselves_are_stored(app: crashonly.App) -> None:
    """Right at each limit, with the widest characters, every backend takes the job (on
    PostgreSQL the task, queue and key sit in btree indexes of bounded row size)."""
    for capability in ("priorities", "unique_keys", "delays"):
        needs(app, capability)
    wide = "\U0001f600"  # 4 bytes of UTF-8
    name = wide * validation.MAX_NAME

    @app.task(name=name, queue=name)
    def t() -> None: ...

    lo, hi = validation.PRIORITY_RANGE
    first = t.options(priority=hi, unique_key=wide * validation.MAX_KEY).enqueue()
    again = t.options(priority=lo, unique_key=wide * validation.MAX_KEY).enqueue()
    assert again.id == first.id and again.duplicate
    t.options(priority=lo, run_at=validation.MAX_TIME, delay=None).enqueue()
    job = first.job
    assert (job.task, job.queue, job.priority) == (name, name, hi)
    assert len(app.list_jobs(queue=name)) == 2


def test_bad_task_options_fail_at_registration(app: crashonly.App) -> None:
    for options in ({"lease": math.nan}, {"lease": math.inf}, {"priority": 2**40},
                    {"max_attempts": 2**40}, {"queue": "q" * 300}, {"timeout": math.nan},
                    {"retry_backoff": math.inf}, {"name": "n" * 300}):
        field = next(iter(options))
        with pytest.raises(crashonly.ConfigError, match=field if field != "name" else "task name"):
            app.task(**options)(lambda: None)  # type: ignore[call-overload]
