"""A hung session store (a private redis-server, SIGSTOPped) costs only the requests that
need a session, and those get 503 quickly; requests without one do not notice."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import IN_CI
from tests.web.harness import KEY, Web


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    binary = shutil.which("redis-server")
    if binary is None:
        if IN_CI:
            pytest.fail("redis-server is not installed")
        pytest.skip("redis-server is not installed")
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "private redis-server did not start"
            time.sleep(0.05)
    yield proc, port
    os.kill(proc.pid, signal.SIGCONT)
    proc.kill()
    proc.wait(5)


def timed(fn: object) -> tuple[float, int]:
    started = time.monotonic()
    try:
        status = fn()  # type: ignore[operator]
    except httpx.HTTPError:
        status = 0
    return time.monotonic() - started, int(status)


def test_a_hung_store_holds_up_only_session_requests_and_those_briefly(
        private_redis: tuple[subprocess.Popen[bytes], int],
        subprocess_env: dict[str, str]) -> None:
    redis, port = private_redis
    env = {**subprocess_env, "CRASHONLY_SECRET_KEY": KEY,
           "SESSION_URL": f"redis://127.0.0.1:{port}/0"}
    web = Web("tests.web.session_apps:session_app", env).ready()
    try:
        with httpx.Client(timeout=30) as http:
            assert http.post(web.url + "/login", json={"user": "ana"}).status_code == 200
            cookie = {"session": http.cookies["session"]}
        os.kill(redis.pid, signal.SIGSTOP)
        results: dict[str, list[tuple[float, int]]] = {"session": [], "plain": []}

        def client(kind: str, http: httpx.Client) -> None:
            with http:
                if kind == "session":
                    http.cookies.update(cookie)
                    r = timed(lambda: http.get(web.url + "/me").status_code)
                else:
                    time.sleep(0.3)  # once the session requests hold whatever they hold
                    r = timed(lambda: http.get(web.url + "/plain").status_code)
                results[kind].append(r)

        # clients made first: making 60 (SSL contexts) would itself load a 2-core machine
        threads = [threading.Thread(target=client, args=(kind, httpx.Client(timeout=30)))
                   for kind in ["session"] * 50 + ["plain"] * 10]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        plain = results["plain"]
        assert [s for _, s in plain] == [200] * 10
        # (before: every thread of the app's pool waited on the store, 5 s per call)
        assert max(t for t, _ in plain) < 1.5, plain
        session = results["session"]
        assert {s for _, s in session} == {503}, session
        assert max(t for t, _ in session) < 4.0, sorted(session)[-3:]
        # known down now: the next session request fails at once, without waiting
        took, status = timed(lambda: httpx.get(web.url + "/me", cookies=cookie).status_code)
        assert status == 503 and took < 0.5, (took, status)

        os.kill(redis.pid, signal.SIGCONT)
        deadline = time.monotonic() + 5
        while True:
            r = httpx.get(web.url + "/me", cookies=cookie, timeout=10)
            if r.status_code == 200:
                assert r.json()["user"] == "ana"
                break
            assert time.monotonic() < deadline, r.status_code
            time.sleep(0.2)
        assert web.popen.poll() is None
    finally:
        os.kill(redis.pid, signal.SIGCONT)
        web.stop()
    text = web.text()
    assert "Traceback" not in text
    assert text.count("session store unavailable") <= 3, text[-2000:]
