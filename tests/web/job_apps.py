"""A queue app and a web app that shows its jobs (the queue is ``$DATABASE_URL``)."""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.routing import Mount

import crashonly
from crashonly.web.jobs import job_router

queue = crashonly.App(os.environ.get("DATABASE_URL", "sqlite:///jobs.db"))


@queue.task(name="add")
def add(a: int, b: int) -> int:
    return a + b


@queue.task(name="fail", max_attempts=1)
def fail() -> None:
    raise ValueError("this job always fails\nsecond line")


@queue.task(name="file_name")
def file_name() -> str:
    return os.fsdecode(b"/data/\xff.csv")  # a lone surrogate: an everyday undecodable name


web = Starlette(routes=[Mount("/jobs", app=job_router(queue, public=True, expose_result=True, max_wait=60))])
