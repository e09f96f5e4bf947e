"""Which failed requests a SIGKILL excuses: exactly those whose connection the killed process
held (issue 10.2), found through /proc with the process frozen, not guessed from timing."""

from __future__ import annotations

import os
import signal
import socket
import sys

import pytest

from crashonly.chaos.faults import group_pids, held_connections
from crashonly.chaos.record import Kill, Request
from crashonly.chaos.verify import http_split
from tests.web.harness import Web, listening_socket

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")


def test_a_sigkill_excuses_only_the_requests_its_process_held(
        subprocess_env: dict[str, str]) -> None:
    env = dict(subprocess_env, CRASHONLY_SECRET_KEY="test-only-not-a-secret-session-key-0123456789")
    sock = listening_socket()  # held here, as `up` holds it
    port = sock.getsockname()[1]
    web = Web("tests.web.apps:hello", env, sock=sock).ready()
    later: Web | None = None
    held = socket.create_connection(("127.0.0.1", port), timeout=10)
    queued: socket.socket | None = None
    try:
        held.sendall(b"GET /sleep?s=30 HTTP/1.1\r\nHost: x\r\n\r\n")  # in flight in `web`
        held.settimeout(0.3)
        with pytest.raises(TimeoutError):
            held.recv(1)
        os.killpg(web.pid, signal.SIGSTOP)
        pids = group_pids(web.pid, stopped=True)
        queued = socket.create_connection(("127.0.0.1", port), timeout=10)  # nobody accepts
        queued.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        cut = held_connections(pids, {port})
        os.killpg(web.pid, signal.SIGKILL)
        web.wait(5)
        assert pids == [web.pid]
        assert cut == [held.getsockname()[1]]
        held.settimeout(5)
        try:
            assert held.recv(1) == b""  # cut: no answer will ever come
        except ConnectionResetError:
            pass
        later = Web("tests.web.apps:hello", env, sock=sock).ready()
        queued.settimeout(10)
        assert queued.recv(4096).startswith(b"HTTP/1.1 200")  # not cut: served by the next one
    finally:
        held.close()
        if queued is not None:
            queued.close()
        web.stop()
        if later is not None:
            later.stop()
        sock.close()

    kill = Kill(t=10.0, name="web.1", pid=web.pid, signal="KILL", cut_ports=cut)
    in_flight = Request(start=9.0, end=10.1, status=None, error="reset",
                        port=cut[0])
    same_time_elsewhere = Request(start=9.5, end=10.2, status=None, error="reset", port=1)
    before = Request(start=8.0, end=9.0, status=None, error="reset", port=cut[0])
    expected, unexpected = http_split([in_flight, same_time_elsewhere, before], [kill], "web")
    assert expected == [in_flight]
    assert unexpected == [same_time_elsewhere, before]
