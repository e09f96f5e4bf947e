"""Draining ``crashonly web`` processes on a shared socket, on a busy machine, and the grace
period as a hard deadline."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from crashonly.web.deadline import MARGIN
from tests.conftest import busy_cores
from tests.supervisor.test_up import Load
from tests.web.harness import Web, listening_socket
from tests.web.test_server import connect, raw

HELLO = "tests.web.apps:hello"


@pytest.fixture
def env(subprocess_env: dict[str, str]) -> dict[str, str]:
    subprocess_env["CRASHONLY_SECRET_KEY"] = "test-only-not-a-secret-session-key-0123456789"
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


def _gone_within(web: Web, seconds: float) -> float:
    """Seconds from now until ``web`` exits (0 expected), failing past ``seconds``."""
    started = time.monotonic()
    assert web.wait(seconds) == 0, web.text()
    return time.monotonic() - started


def test_async_handler_blocking_the_loop_does_not_outlive_the_grace(
        env: dict[str, str]) -> None:
    """Issue 12.6: ``time.sleep(20)`` inside an async handler blocks the event loop, so the
    drain cannot run; the process still ends at the grace period plus the margin, and says
    truthfully when."""
    web = Web("tests.web.apps:blocking", env, "--grace", "3").ready()
    try:
        with connect(web.url) as blocked:
            blocked.sendall(b"GET /block HTTP/1.1\r\nHost: x\r\n\r\n")
            time.sleep(0.3)
            web.signal(signal.SIGTERM)
            took = _gone_within(web, 10)
    finally:
        web.stop()
    assert 2.5 < took < 3 + MARGIN + 1.0, took
    line = web.wait_for(r"hard deadline: still running (\d+\.\d+) s after the signal")
    assert 3.0 <= float(line.group(1)) < 3 + MARGIN + 0.5, line.string
    assert "1 request(s)" in line.string


def test_wsgi_requests_cut_at_the_grace_get_no_retry_and_exit_is_on_time(
        env: dict[str, str], tmp_path: Path) -> None:
    """Issue 12.6: a WSGI handler's thread cannot be cancelled. One that finishes within the
    grace is answered; one still running at the grace gets no answer at all (a "503, retry"
    would make a client that obeys place the order twice), and the process does not wait for
    the 30 s one."""
    env["ORDERS_DIR"] = str(tmp_path)
    web = Web("tests.web.apps:wsgi_orders", env, "--grace", "3").ready()
    requests = {
        "quick": b"POST /order?after=1&id=quick HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        "slow": b"POST /order?after=6&id=slow HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        "sleep": b"GET /sleep HTTP/1.1\r\nHost: x\r\n\r\n",
    }
    socks = {name: connect(web.url) for name in requests}
    try:
        for name, request in requests.items():
            socks[name].sendall(request)
        time.sleep(0.3)
        web.signal(signal.SIGTERM)
        answers = {name: raw(sock, b"", timeout=10) for name, sock in socks.items()}
        took = _gone_within(web, 10)
    finally:
        web.stop()
        for sock in socks.values():
            sock.close()
    assert answers["quick"].startswith(b"HTTP/1.1 201"), answers["quick"]
    assert (tmp_path / "quick").read_text() == "placed"
    for name in ("slow", "sleep"):
        assert b"503" not in answers[name] and b"retry" not in answers[name].lower(), answers
        assert answers[name] in (b"", b"<RESET>"), answers[name]  # cut: outcome unknown
    assert not (tmp_path / "slow").exists()  # the process is gone: it never will be
    assert took < 3 + MARGIN + 1.0, took
    web.wait_for(r"hard deadline: still running .*WSGI")


def test_post_cut_at_the_grace_is_not_told_to_retry(env: dict[str, str]) -> None:
    """A GET still running at the grace is answered "503, Retry-After: 0" (test_server); a
    POST may have done its work already, so it is cut without an answer."""
    web = Web(HELLO, env, "--grace", "0.5").ready()
    try:
        with connect(web.url) as s:
            s.sendall(b"POST /sleep?s=30 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
            time.sleep(0.2)
            web.signal(signal.SIGTERM)
            answer = raw(s, b"")
            _gone_within(web, 5)
    finally:
        web.stop()
    assert answer in (b"", b"<RESET>"), answer
