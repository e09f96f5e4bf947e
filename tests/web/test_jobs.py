"""Job status over HTTP, long-polls and events that survive a web process going away."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import crashonly
from crashonly import client
from tests.web.harness import KEY, Web, listening_socket

APP = "tests.web.job_apps:web"


@pytest.fixture
def env(subprocess_env: dict[str, str], db_url: str) -> dict[str, str]:
    return {**subprocess_env, "CRASHONLY_SECRET_KEY": KEY, "DATABASE_URL": db_url}


@pytest.fixture
def queue(db_url: str) -> Iterator[crashonly.App]:
    from tests.web import job_apps

    app = crashonly.App(db_url)
    app.tasks.update(job_apps.queue.tasks)
    app.migrate()
    yield app
    app.close()


def later(seconds: float, fn: Any) -> threading.Thread:
    thread = threading.Thread(target=lambda: (time.sleep(seconds), fn()), daemon=True)
    thread.start()
    return thread


def run_jobs(db_url: str) -> None:
    """A worker of its own (its own connection, in its own thread)."""
    from tests.web import job_apps

    app = crashonly.App(db_url)
    app.tasks.update(job_apps.queue.tasks)
    try:
        app.drain()
    finally:
        app.close()


def test_status_and_bad_ids(env: dict[str, str], queue: crashonly.App) -> None:
    job = queue.enqueue("add", args=[1, 2])
    web = Web(APP, env).ready()
    try:
        view = httpx.get(f"{web.url}/jobs/{job.id}").json()
        assert view["state"] == "ready" and view["final"] is False and view["task"] == "add"
        assert "args" not in view
        for bad in ["999999", "abc", "-1", "1.5", str(2**70), "%00", "١٢", "9" * 5000]:
            for suffix in ("", "/wait", "/events"):
                r = httpx.get(f"{web.url}/jobs/{bad}{suffix}")
                assert r.status_code == 404, bad[:20]
        assert httpx.get(f"{web.url}/jobs/{job.id}/wait?timeout=x").status_code == 400
        assert httpx.get(f"{web.url}/jobs/{job.id}/wait?timeout=nan").status_code == 400
        assert httpx.get(f"{web.url}/jobs/{job.id}/wait?timeout=1e9").status_code == 400
        assert web.popen.poll() is None
    finally:
        web.stop()
    assert "Traceback" not in web.text()


def test_long_poll(env: dict[str, str], queue: crashonly.App, db_url: str) -> None:
    job = queue.enqueue("add", args=[2, 3])
    failing = queue.enqueue("fail")
    web = Web(APP, env).ready()
    try:
        r = httpx.get(f"{web.url}/jobs/{job.id}/wait?timeout=0.2")
        assert r.status_code == 202 and r.json()["state"] == "ready"
        later(0.3, lambda: run_jobs(db_url))
        r = httpx.get(f"{web.url}/jobs/{job.id}/wait?timeout=10", timeout=15)
        assert r.status_code == 200 and r.json()["result"] == 5
        r = httpx.get(f"{web.url}/jobs/{failing.id}/wait?timeout=10", timeout=15)
        assert r.status_code == 200 and r.json()["state"] == "buried"
        assert r.json()["error"] == "second line"  # last line only, no traceback
    finally:
        web.stop()


def test_long_poll_ends_with_a_reconnect_hint_on_sigterm(env: dict[str, str],
                                                        queue: crashonly.App) -> None:
    job = queue.enqueue("add", args=[1, 1])
    web = Web(APP, env).ready()
    try:
        later(0.5, web.signal)
        started = time.monotonic()
        r = httpx.get(f"{web.url}/jobs/{job.id}/wait?timeout=30", timeout=40)
        assert r.status_code == 503 and r.headers["retry-after"] == "0"
        assert r.json()["reconnect"] is True and r.headers["connection"] == "close"
        assert web.wait(5) == 0
        assert time.monotonic() - started < 3  # not the 30 s of the poll, nor the grace
    finally:
        web.stop()


def test_events_stream_and_last_event_id(env: dict[str, str], queue: crashonly.App,
                                         db_url: str) -> None:
    job = queue.enqueue("add", args=[20, 22])
    web = Web(APP, env).ready()
    try:
        later(0.4, lambda: run_jobs(db_url))
        with httpx.stream("GET", f"{web.url}/jobs/{job.id}/events", timeout=15) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            text = "".join(r.iter_text())
        assert text.count("event: state") == 2  # ready, then done
        last_id = [line for line in text.splitlines() if line.startswith("id: ")][-1][4:]
        assert last_id.startswith("done-")
        assert '"result":42' in text
        again = httpx.get(f"{web.url}/jobs/{job.id}/events", headers={"last-event-id": last_id})
        assert again.status_code == 204  # EventSource stops reconnecting
        seen = list(client.events(f"{web.url}/jobs", job.id, timeout=10))
        assert [v["state"] for v in seen] == ["done"]
    finally:
        web.stop()


def test_a_result_with_undecodable_bytes_is_shown(env: dict[str, str], queue: crashonly.App,
                                                  db_url: str) -> None:
    """A result holding os.fsdecode(b"\\xff") (a lone surrogate) is valid JSON on every route."""
    job = queue.enqueue("file_name")
    run_jobs(db_url)
    web = Web(APP, env).ready()
    try:
        for suffix in ("", "/wait?timeout=1"):
            r = httpx.get(f"{web.url}/jobs/{job.id}{suffix}")
            assert r.status_code == 200, (suffix, r.text)
            assert r.json()["result"] == "/data/\udcff.csv"
        with httpx.stream("GET", f"{web.url}/jobs/{job.id}/events") as r:
            line = next(x for x in r.iter_lines() if x.startswith("data:"))
        assert "\\udcff" in line
    finally:
        web.stop()
    assert "Traceback" not in web.text()


def test_client_errors(env: dict[str, str], queue: crashonly.App, db_url: str) -> None:
    failing = queue.enqueue("fail")
    pending = queue.enqueue("add", args=[1, 2])
    run_jobs(db_url)
    stuck = queue.enqueue("add", args=[0, 0], delay=3600)
    web = Web(APP, env).ready()
    try:
        base = f"{web.url}/jobs"
        assert client.wait(base, pending.id, timeout=5) == 3
        with pytest.raises(crashonly.JobFailed, match="second line"):
            client.wait(base, failing.id, timeout=5)
        with pytest.raises(crashonly.JobNotFound):
            client.wait(base, 424242, timeout=5)
        started = time.monotonic()
        with pytest.raises(crashonly.JobTimeout):
            client.wait(base, stuck.id, timeout=0.5)
        assert time.monotonic() - started < 3
    finally:
        web.stop()


@pytest.mark.parametrize("how", ["sigterm-shared-socket", "sigkill-same-port"])
def test_client_wait_survives_a_web_restart(how: str, env: dict[str, str],
                                            queue: crashonly.App, db_url: str) -> None:
    job = queue.enqueue("add", args=[40, 2])
    sock = listening_socket()
    port = sock.getsockname()[1]
    if how == "sigkill-same-port":
        sock.close()
        start = lambda: Web(APP, env, "--port", str(port)).ready()  # noqa: E731
    else:
        start = lambda: Web(APP, env, sock=sock).ready()  # noqa: E731
    first = start()
    webs = [first]
    result: list[Any] = []
    waiter = threading.Thread(target=lambda: result.append(
        client.wait(f"http://127.0.0.1:{port}/jobs", job.id, timeout=30, poll=20)))
    try:
        waiter.start()
        time.sleep(0.5)  # the client is in its long-poll
        first.signal(signal.SIGTERM if how.startswith("sigterm") else signal.SIGKILL)
        first.wait(5)
        time.sleep(0.3)  # nobody serves: the client keeps trying
        webs.append(start())
        run_jobs(db_url)
        waiter.join(15)
        assert result == [42]
    finally:
        for web in webs:
            web.stop()
        sock.close()


def test_client_events_survive_a_drain(env: dict[str, str], queue: crashonly.App,
                                       db_url: str) -> None:
    job = queue.enqueue("add", args=[1, 2])
    sock = listening_socket()
    port = sock.getsockname()[1]
    webs = [Web(APP, env, sock=sock).ready()]
    seen: list[dict[str, Any]] = []

    def follow() -> None:
        seen.extend(client.events(f"http://127.0.0.1:{port}/jobs", job.id, timeout=30))

    waiter = threading.Thread(target=follow)
    try:
        waiter.start()
        time.sleep(0.5)
        webs[0].signal()
        assert webs[0].wait(5) == 0
        webs.append(Web(APP, env, sock=sock).ready())
        run_jobs(db_url)
        waiter.join(15)
        assert [v["state"] for v in seen] == ["ready", "done"]  # "ready" not repeated
        assert seen[-1]["result"] == 3
    finally:
        for web in webs:
            web.stop()
        sock.close()


def test_authorize_hides_other_peoples_jobs(tmp_path: Path, db_url: str) -> None:
    import asyncio

    from starlette.applications import Starlette
    from starlette.routing import Mount

    from crashonly.web.jobs import job_router

    app = crashonly.App(db_url)
    try:
        mine = app.enqueue("x", kwargs={"owner": "ana"})
        theirs = app.enqueue("x", kwargs={"owner": "bob"})

        async def only_ana(request: Any, job: crashonly.Job) -> bool:
            return bool(job.kwargs.get("owner") == "ana")

        web = Starlette(routes=[Mount("/jobs", app=job_router(app, authorize=only_ana))])

        async def check() -> tuple[int, int]:
            transport = httpx.ASGITransport(app=web)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
                return ((await http.get(f"/jobs/{mine.id}")).status_code,
                        (await http.get(f"/jobs/{theirs.id}")).status_code)

        assert asyncio.run(check()) == (200, 404)
    finally:
        app.close()


def _router_client(router: Any) -> Any:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    web = Starlette(routes=[Mount("/jobs", app=router)])
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=web), base_url="http://t")


def test_router_needs_authorize_or_an_explicit_public(queue: crashonly.App) -> None:
    from crashonly.errors import ConfigError
    from crashonly.web.jobs import job_router

    with pytest.raises(ConfigError, match="authorize"):
        job_router(queue)
    with pytest.raises(ConfigError, match="not both"):
        job_router(queue, authorize=lambda r, j: True, public=True)


def test_result_and_error_are_shown_only_when_the_app_opts_in(
        queue: crashonly.App, db_url: str) -> None:
    import asyncio

    from crashonly.web.jobs import job_router

    done = queue.enqueue("add", args=[20, 22])
    failed = queue.enqueue("fail")
    run_jobs(db_url)

    async def views(router: Any) -> list[dict[str, Any]]:
        async with _router_client(router) as http:
            return [(await http.get(f"/jobs/{i}")).json() for i in (done.id, failed.id)]

    hidden = asyncio.run(views(job_router(queue, public=True)))
    assert [v["state"] for v in hidden] == ["done", "buried"]
    assert all(v["result"] is None and v["error"] is None for v in hidden)
    shown = asyncio.run(views(job_router(queue, authorize=lambda r, j: True,
                                         expose_result=True)))
    assert shown[0]["result"] == 42 and shown[1]["error"] == "second line"


def test_streams_are_capped_in_number_and_lifetime(queue: crashonly.App) -> None:
    import asyncio

    from crashonly.web.jobs import job_router

    job = queue.enqueue("add", args=[1, 1])  # no worker: it stays ready
    router = job_router(queue, public=True, max_streams=2, stream_lifetime=0.5)

    async def scenario() -> tuple[list[int], int, str, float]:
        async with _router_client(router) as http:
            polls = [asyncio.create_task(http.get(f"/jobs/{job.id}/wait?timeout=1.5"))
                     for _ in range(2)]
            await asyncio.sleep(0.3)
            third = await http.get(f"/jobs/{job.id}/wait?timeout=1")
            codes = [(await p).status_code for p in polls]
            started = time.monotonic()
            events = await http.get(f"/jobs/{job.id}/events")  # ends at its lifetime
            took = time.monotonic() - started
            return codes, third.status_code, events.text, took

    codes, third, events, took = asyncio.run(scenario())
    assert codes == [202, 202] and third == 503
    assert "event: state" in events and events.rstrip().endswith("event: reconnect\ndata: {}")
    assert 0.4 < took < 3


def test_polls_do_not_read_the_arguments(queue: crashonly.App) -> None:
    """A status poll reads the job's state, never its (possibly huge) arguments; only the
    first read of a request, for ``authorize``, reads the job whole."""
    job = queue.enqueue("add", args=["x" * 1_000_000, 1])
    assert queue.get_job(job.id, payload=False).payload == ""
    assert len(queue.get_job(job.id).payload) > 1_000_000
