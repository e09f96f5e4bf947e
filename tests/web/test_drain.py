"""Draining ``crashonly web`` processes on a shared socket, on a busy machine, and the grace
period as a hard deadline."""

from __future__ import annotations

import signal
import time

import pytest

from tests.conftest import busy_cores
from tests.supervisor.test_up import Load
from tests.web.harness import Web, listening_socket

HELLO = "tests.web.apps:hello"


@pytest.fixture
def env(subprocess_env: dict[str, str]) -> dict[str, str]:
    subprocess_env["CRASHONLY_SECRET_KEY"] = "test-secret"
    return subprocess_env


def _wait_ok(load: Load, more: int, timeout: float) -> None:
    target = load.ok + more
    deadline = time.monotonic() + timeout
    while load.ok < target and time.monotonic() < deadline:
        time.sleep(0.02)


def test_draining_alone_resets_no_request_under_cpu_stress(env: dict[str, str]) -> None:
    """Issue 10: the sibling is SIGKILLed (not back yet) when the other process is told to
    drain, with a new connection per request arriving all the time. Every connection the
    kernel accepted is answered: by the draining process, or by the replacement once up."""
    sock = listening_socket()
    port = sock.getsockname()[1]
    procs: list[Web] = []
    with busy_cores():
        try:
            sibling = Web(HELLO, env, sock=sock).ready(60)
            web = Web(HELLO, env, sock=sock).ready(60)
            procs += [sibling, web]
            sibling.signal(signal.SIGKILL)
            sibling.wait(10)
            load = Load(port, clients=12)
            try:
                for _ in range(3):  # draining while requests arrive, three times over
                    _wait_ok(load, 300, 20)
                    web.signal(signal.SIGTERM)
                    assert web.wait(15) == 0, web.text()
                    time.sleep(0.3)  # connections queue on the socket: nobody accepts
                    web = Web(HELLO, env, sock=sock).ready(60)
                    procs.append(web)
                _wait_ok(load, 300, 20)
            finally:
                load.stop()
        finally:
            for proc in procs:
                proc.stop()
            sock.close()
    assert load.failures == [], load.failures[:5]
    assert load.ok > 900
