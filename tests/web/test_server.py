"""``crashonly web`` as a real process: serving, probes, SIGTERM under load, bad input."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import PYTHON, ROOT
from tests.web.harness import KEY, Web, listening_socket
from tests.web.load import hammer

HELLO = "tests.web.apps:hello"


@pytest.fixture
def env(subprocess_env: dict[str, str]) -> dict[str, str]:
    subprocess_env["CRASHONLY_SECRET_KEY"] = KEY
    return subprocess_env


def raw(sock: socket.socket, request: bytes, timeout: float = 5.0) -> bytes:
    """Send ``request`` on ``sock`` and read until the server closes it."""
    sock.settimeout(timeout)
    sock.sendall(request)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data + b"<RESET>"
        if not chunk:
            return data
        data += chunk


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=5)


def test_serves_asgi_with_probes(env: dict[str, str]) -> None:
    web = Web(HELLO, env).ready()
    try:
        assert httpx.get(web.url + "/").text == "hello"
        live, ready = httpx.get(web.url + "/livez"), httpx.get(web.url + "/readyz")
        assert (live.status_code, ready.status_code) == (200, 200)
        web.signal()
        assert web.wait(5) == 0
    finally:
        web.stop()
    assert "stopped" in web.text()


def test_serves_wsgi(env: dict[str, str]) -> None:
    web = Web("tests.web.apps:wsgi_hello", env).ready()
    try:
        assert httpx.get(web.url + "/x").text == "hello from wsgi /x"
        assert httpx.get(web.url + "/readyz").status_code == 200
    finally:
        web.stop()


def test_probe_paths_are_configurable(env: dict[str, str]) -> None:
    web = Web(HELLO, env, "--livez", "/healthz", "--readyz", "/ready").ready()
    try:
        assert httpx.get(web.url + "/ready").text == "ready\n"
        assert httpx.get(web.url + "/healthz").text == "alive\n"
        assert httpx.get(web.url + "/readyz").text == "hello"  # now the app's own path
    finally:
        web.stop()


def test_sigterm_under_load_fails_no_accepted_request(env: dict[str, str]) -> None:
    web = Web(HELLO, env).ready()
    try:
        out = asyncio.run(hammer(web.url + "/work", concurrency=50, seconds=3.0, at=1.0,
                                 action=web.signal))
        assert web.wait(5) == 0
    finally:
        web.stop()
    assert out.failed == [], out.failed[:5]
    assert out.ok > 50
    assert out.closing > 0  # requests in flight at SIGTERM were served, then closed
    assert out.refused > 0  # later connections were refused, not reset


def test_shared_socket_keeps_serving_while_one_process_drains(env: dict[str, str]) -> None:
    sock = listening_socket()
    first = Web(HELLO, env, sock=sock).ready()
    second = Web(HELLO, env, sock=sock).ready()
    url = first.url
    try:
        out = asyncio.run(hammer(url + "/work", concurrency=50, seconds=2.5, at=0.8,
                                 action=first.signal, stop_on_refusal=False))
        assert first.wait(5) == 0
        assert httpx.get(url + "/").text == "hello"  # served by the second
        assert second.popen.poll() is None
    finally:
        first.stop()
        second.stop()
        sock.close()
    assert out.failed == [], out.failed[:5]
    assert out.refused == 0  # the socket outlived the process that stopped
    assert out.ok > 50


def test_in_flight_request_finishes_and_readyz_turns_503(env: dict[str, str]) -> None:
    web = Web(HELLO, env).ready()
    try:
        with httpx.Client() as client, connect(web.url) as idle:
            idle.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = b""
            while not answer.endswith(b"hello"):
                answer += idle.recv(4096)

            async def slow() -> httpx.Response:
                async with httpx.AsyncClient() as c:
                    return await c.get(web.url + "/sleep?s=1")

            async def run() -> httpx.Response:
                task = asyncio.create_task(slow())
                await asyncio.sleep(0.3)
                web.signal()
                await asyncio.sleep(0.1)
                # the kept-alive connection may still ask, and learns we are leaving
                answer = raw(idle, b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
                assert b" 503 " in answer and b"connection: close" in answer.lower()
                return await task

            started = time.monotonic()
            response = asyncio.run(run())
            assert response.status_code == 200 and response.text == "slept"
            assert response.headers["connection"] == "close"
            assert web.wait(5) == 0
            assert time.monotonic() - started < 3
            with pytest.raises(httpx.ConnectError):
                client.get(web.url + "/")
    finally:
        web.stop()


def test_connection_accepted_just_before_sigterm_is_served(env: dict[str, str]) -> None:
    """uvicorn PR #3124: a connection whose request was not read yet is reset on shutdown."""
    sock = listening_socket()
    web = Web(HELLO, env, sock=sock).ready()
    early: list[socket.socket] = []
    try:
        early += [connect(web.url) for _ in range(5)]
        time.sleep(0.2)  # accepted by the web process, no request yet
        web.signal()
        time.sleep(0.05)
        answers = [raw(s, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") for s in early]
        assert web.wait(5) == 0
    finally:
        web.stop()
        sock.close()
        for s in early:
            s.close()
    for answer in answers:
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"hello"), answer


def test_grace_cuts_a_long_request_with_503(env: dict[str, str]) -> None:
    web = Web(HELLO, env, "--grace", "0.5").ready()
    try:
        with connect(web.url) as s:
            s.sendall(b"GET /sleep?s=30 HTTP/1.1\r\nHost: x\r\n\r\n")
            time.sleep(0.2)
            started = time.monotonic()
            web.signal()
            answer = raw(s, b"")
            assert web.wait(5) == 0
            assert time.monotonic() - started < 3
    finally:
        web.stop()
    assert answer.startswith(b"HTTP/1.1 503"), answer
    assert b"retry-after: 0" in answer.lower()


def test_second_signal_stops_at_once(env: dict[str, str]) -> None:
    web = Web(HELLO, env, "--grace", "30").ready()
    try:
        with connect(web.url) as s:
            s.sendall(b"GET /sleep?s=30 HTTP/1.1\r\nHost: x\r\n\r\n")
            time.sleep(0.2)
            started = time.monotonic()
            web.signal()
            time.sleep(0.2)
            web.signal()
            assert web.wait(5) == 0
            assert time.monotonic() - started < 3
    finally:
        web.stop()


def test_idle_keep_alive_connections_do_not_hold_the_exit(env: dict[str, str]) -> None:
    web = Web(HELLO, env, "--keep-alive", "60").ready()
    try:
        with httpx.Client() as client:
            assert client.get(web.url + "/").status_code == 200  # now pooled, idle
            started = time.monotonic()
            web.signal()
            assert web.wait(5) == 0
            assert time.monotonic() - started < 2
    finally:
        web.stop()


def test_systemd_socket_activation_and_notify(env: dict[str, str], tmp_path: Path) -> None:
    sock = listening_socket()
    port = sock.getsockname()[1]
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(10)
    env = {**env, "NOTIFY_SOCKET": str(tmp_path / "notify")}
    # fd 3 and LISTEN_PID of the process itself, as systemd does (exec keeps the pid)
    launcher = (
        "import os, sys; os.dup2(int(sys.argv[1]), 3); os.environ['LISTEN_FDS'] = '1'; "
        "os.environ['LISTEN_PID'] = str(os.getpid()); "
        "os.execv(sys.executable, [sys.executable, '-m', 'crashonly.cli', 'web', sys.argv[2]])"
    )
    proc = subprocess.Popen([PYTHON, "-c", launcher, str(sock.fileno()), HELLO], cwd=ROOT,
                            env=env, pass_fds=(sock.fileno(),), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        assert notify.recv(100) == b"READY=1"
        assert httpx.get(f"http://127.0.0.1:{port}/").text == "hello"
        proc.send_signal(signal.SIGTERM)
        assert notify.recv(100) == b"STOPPING=1"
        assert proc.wait(5) == 0
    finally:
        proc.kill()
        proc.wait()
        sock.close()
        notify.close()


def test_bad_input_never_crashes_the_process(env: dict[str, str]) -> None:
    web = Web(HELLO, env, "--header-timeout", "0.5").ready()
    try:
        with connect(web.url) as s:  # not HTTP at all
            assert raw(s, b"\x16\x03\x01garbage\r\n\r\n").startswith(b"HTTP/1.1 400")
        with connect(web.url) as s:  # a header that never ends
            answer = raw(s, b"GET / HTTP/1.1\r\nHost: " + b"x" * 100_000)
            assert answer in (b"", b"<RESET>") or answer.startswith(b"HTTP/1.1 4"), answer
        with connect(web.url) as s:  # a slow client sends half a request head and stops
            s.sendall(b"GET / HTTP/1.1\r\nHo")
            started = time.monotonic()
            assert raw(s, b"") in (b"", b"<RESET>")
            assert time.monotonic() - started < 3
        with connect(web.url) as s:  # connects and says nothing
            started = time.monotonic()
            assert raw(s, b"") in (b"", b"<RESET>")
            assert time.monotonic() - started < 3
        assert httpx.get(web.url + "/").text == "hello"
        assert web.popen.poll() is None
    finally:
        web.stop()


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "crashonly.cli", "web", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize(("args", "message"), [
    (["no_such_module:app"], "cannot import 'no_such_module'"),
    (["tests.web.apps:nothing"], "has no attribute 'nothing'"),
    ([HELLO, "--fd", "0"], "not a"),
    ([HELLO, "--port", "99999"], "out of range"),
    ([HELLO, "--grace", "soon"], "not a number of seconds"),
    ([HELLO, "--host", "0.0.0.0", "--port", "0"], "CRASHONLY_SECRET_KEY is not set"),
])
def test_user_mistakes_get_one_line_and_no_traceback(
        subprocess_env: dict[str, str], args: list[str], message: str) -> None:
    subprocess_env.pop("CRASHONLY_SECRET_KEY", None)
    done = run_cli(*args, env=subprocess_env)
    assert done.returncode != 0
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_port_in_use_is_a_clear_error(env: dict[str, str]) -> None:
    sock = listening_socket()
    try:
        done = run_cli(HELLO, "--port", str(sock.getsockname()[1]), env=env)
    finally:
        sock.close()
    assert done.returncode == 1
    assert "another process is using it" in done.stderr and "Traceback" not in done.stderr


def test_port_comes_from_the_environment(env: dict[str, str]) -> None:
    sock = listening_socket()
    port = sock.getsockname()[1]
    sock.close()
    web = Web(HELLO, {**env, "PORT": str(port)}, "--grace", "1", "--access-log").ready()
    try:
        assert web.url == f"http://127.0.0.1:{port}"
    finally:
        web.stop()
