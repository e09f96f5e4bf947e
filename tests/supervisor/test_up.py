"""`crashonly up` end to end: real subprocesses, real signals, real sockets and HTTP."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import PYTHON
from tests.supervisor.harness import CHILDREN, Up, crashonly, tagged, wait_until_gone

WEB = f"web: {PYTHON} {CHILDREN / 'webchild.py'}\n"
UpFactory = Callable[..., Up]


def get(port: int, path: str = "/", timeout: float = 10.0) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        assert response.status == 200
        return response.read().decode().strip()
    finally:
        conn.close()


class Load:
    """``clients`` threads sending GETs back to back until stopped; counts every outcome."""

    def __init__(self, port: int, clients: int = 8) -> None:
        self.port = port
        self.ok = 0
        self.failures: list[str] = []
        self.pids: set[str] = set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run) for _ in range(clients)]
        for thread in self._threads:
            thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                pid = get(self.port)
            except Exception as exc:  # every failure is counted and reported, none swallowed
                with self._lock:
                    self.failures.append(repr(exc))
                continue
            with self._lock:
                self.ok += 1
                self.pids.add(pid)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)


def test_logs_are_prefixed_and_the_socket_is_handed_to_every_web_child(up: UpFactory) -> None:
    proc = up(WEB + "worker: echo worker says $CRASHONLY_PROCESS; exec sleep 60\n",
              "--notify", "web", "--formation", "web=2,worker=1")
    port = proc.port()
    proc.wait_for(r"web\.1 \(pid \d+\) ready in .* \(READY=1\)")
    proc.wait_for(r"web\.2 \(pid \d+\) ready in .* \(READY=1\)")
    proc.wait_for(r"^\d\d:\d\d:\d\d worker\.1 +\| worker says worker\.1$")
    # A process that never sends READY=1 (and was not declared with --notify) is ready alive 1 s.
    proc.wait_for(r"worker\.1 \(pid \d+\) ready in .* \(alive 1 s; it does not send READY=1\)")
    proc.wait_for(r"^\d\d:\d\d:\d\d web\.1 +\| serving on fd 3 as pid \d+$")
    # Both children accept from the one socket `up` bound.
    pids = {get(port) for _ in range(60)}
    assert len(pids) == 2, pids


def test_sigterm_drains_and_exits_zero_leaving_nothing(up: UpFactory) -> None:
    proc = up(WEB, "--notify", "web", "--formation", "web=2")
    port = proc.port()
    proc.wait_for(r"web\.1 .* ready")
    proc.wait_for(r"web\.2 .* ready")
    result: list[str] = []
    slow = threading.Thread(target=lambda: result.append(get(port, "/slow")))
    slow.start()
    proc.wait_for(r"\| slow request started$")  # accepted: in flight, not in the backlog
    proc.signal(signal.SIGTERM)
    slow.join(10)
    assert result and result[0].isdigit(), "the in-flight request was not finished"
    assert proc.wait() == 0
    assert proc.count(r"\| drained$") == 2, proc.text()
    assert tagged(proc.tag) == []


def test_rolling_restart_under_load_fails_no_request(up: UpFactory) -> None:
    proc = up(WEB, "--notify", "web", "--formation", "web=2")
    port = proc.port()
    proc.wait_for(r"web\.1 .* ready")
    proc.wait_for(r"web\.2 .* ready")
    before = {get(port) for _ in range(30)}
    load = Load(port)
    try:
        for _ in range(3):
            result = proc.ctl("restart")
            assert result.returncode == 0, result.stderr
            assert "restarted web.1 web.2 in" in result.stdout
        time.sleep(0.3)
    finally:
        load.stop()
    assert load.failures == []
    assert load.ok > 50
    after = {get(port) for _ in range(30)}
    assert not before & after, proc.text()
    assert proc.count(r"web\.\d \(pid \d+\) stopped in .*: exit code 0") == 6


def test_sighup_is_a_rolling_restart(up: UpFactory) -> None:
    proc = up(WEB, "--notify", "web", "--formation", "web=1")
    port = proc.port()
    proc.wait_for(r"web\.1 .* ready")
    old = get(port)
    proc.signal(signal.SIGHUP)
    proc.wait_for(r"rolling restart done in .*: web\.1")
    assert get(port) != old


def test_rolling_restart_stops_when_the_new_process_is_not_ready(up: UpFactory,
                                                                 tmp_path: Path) -> None:
    # The first web.1 becomes ready; the marker file then makes every later start hang.
    marker = tmp_path / "broken"
    command = (f"web: if [ -e {marker} ]; then exec {PYTHON} {CHILDREN / 'notready.py'}; "
               f"else exec {PYTHON} {CHILDREN / 'webchild.py'}; fi\n")
    proc = up(command, "--notify", "web", "--ready-timeout", "1.5")
    port = proc.port()
    proc.wait_for(r"web\.1 .* ready")
    old = get(port)
    marker.write_text("")
    result = proc.ctl("restart", "web")
    assert result.returncode == 1
    assert "not ready within 1.5 s; the old process keeps running" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert get(port) == old


def test_a_child_not_ready_in_time_is_replaced(up: UpFactory) -> None:
    proc = up(f"slow: {PYTHON} {CHILDREN / 'notready.py'}\n", "--ready-timeout", "1")
    first = int(proc.wait_for(r"started slow\.1 \(pid (\d+)\)")[1])
    proc.wait_for(r"slow\.1 status: warming up forever")
    proc.wait_for(rf"slow\.1 \(pid {first}\) not ready after 1 s: replacing it")
    second = int(proc.wait_for(r"started slow\.1 \(pid (?!{first}\))(\d+)\)".replace(
        "{first}", str(first)))[1])
    assert second != first


def test_a_crash_loop_backs_off_and_is_reported(up: UpFactory) -> None:
    proc = up("crash: echo boom; exit 3\nsteady: exec sleep 60\n")
    proc.wait_for(r"crash\.1 is crash-looping: 3 failures in a row \(last: exit code 3\)")
    time.sleep(2.0)
    starts = proc.count(r"started crash\.1")
    # 0.1 + 0.2 + 0.4 + 0.8 + 1.6 s of backoff: a spinning loop would start it hundreds of times
    assert 4 <= starts <= 8, proc.text()
    assert proc.count(r"started steady\.1") == 1


def test_shutdown_sigkills_what_ignores_sigterm_and_exits_nonzero(up: UpFactory) -> None:
    proc = up("stubborn: trap '' TERM; exec sleep 60\npolite: exec sleep 60\n", "--timeout", "1")
    proc.wait_for(r"stubborn\.1 .* ready")
    proc.wait_for(r"polite\.1 .* ready")
    proc.signal(signal.SIGINT)
    assert proc.wait() == 1
    proc.wait_for(r"stubborn\.1 \(pid \d+\) still running 1 s after SIGTERM: SIGKILL")
    proc.wait_for(r"polite\.1 \(pid \d+\) stopped in .*: killed by SIGTERM")
    assert tagged(proc.tag) == []


def test_children_stop_when_up_is_sigkilled(up: UpFactory) -> None:
    # A simple command, a pipeline (its shell stays), and a web child.
    proc = up(WEB + "sleeper: exec sleep 60\npipeline: sleep 60 | cat\n", "--notify", "web")
    proc.wait_for(r"web\.1 .* ready")
    proc.wait_for(r"pipeline\.1 .* ready")
    assert len(tagged(proc.tag)) >= 5  # up, "--notify", "web", watchdog, web, sleep, sh+sleep+cat
    os.kill(proc.popen.pid, signal.SIGKILL)
    assert wait_until_gone(proc.tag, 10) == []


def test_scale_changes_the_formation_while_running(up: UpFactory) -> None:
    proc = up(WEB + "worker: exec sleep 60\n", "--notify", "web", "--formation", "web=1,worker=2")
    port = proc.port()
    proc.wait_for(r"web\.1 .* ready")
    result = proc.ctl("scale", "web=3", "worker=1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "web=3 worker=1"
    proc.wait_for(r"web\.3 .* ready")
    proc.wait_for(r"stopping worker\.2 .*scaled down")
    deadline = time.monotonic() + 10
    pids: set[str] = set()
    while len(pids) < 3 and time.monotonic() < deadline:
        pids.add(get(port))
    assert len(pids) == 3
    proc.wait_for(r"worker\.1 .* ready")
    status = proc.ctl("scale")
    assert status.stdout.splitlines()[0] == "web=3 worker=1"
    assert sum(" ready" in line for line in status.stdout.splitlines()) == 4

    bad = proc.ctl("scale", "wbe=2")
    assert bad.returncode == 1
    assert bad.stderr.strip() == (
        "crashonly: error: unknown process type 'wbe' in the formation; the Procfile has: "
        "web, worker")


def test_a_second_up_on_the_same_procfile_is_refused(up: UpFactory, tmp_path: Path,
                                                     subprocess_env: dict[str, str]) -> None:
    proc = up("sleeper: exec sleep 60\n")
    proc.wait_for(r"started sleeper\.1")
    second = crashonly(["up", "--port", "0"], subprocess_env, tmp_path)
    assert second.returncode == 1
    assert "another `crashonly up` is already running" in second.stderr


def test_colour_on_request(up: UpFactory) -> None:
    proc = up("hello: echo hi; exec sleep 60\n")
    proc.env["FORCE_COLOR"] = "1"
    proc.close()
    coloured = Up(proc.workdir, "hello: echo hi; exec sleep 60\n", [],
                  {**proc.env, "FORCE_COLOR": "1"})
    try:
        coloured.wait_for(r"\x1b\[\d+m\d\d:\d\d:\d\d hello\.1 +\| \x1b\[0mhi$")
    finally:
        coloured.close()


# ---- bad input: one line, non-zero, nothing started ------------------------------------------


@pytest.mark.parametrize(("files", "args", "message"), [
    ({"Procfile": "web: ok\noops\n"}, [],
     r"^crashonly: error: .*Procfile:2: expected `name: command`"),
    ({"Procfile": "web: exec sleep 60\n"}, ["--formation", "web=1,wrker=2"],
     r"^crashonly: error: unknown process type 'wrker' in the formation; the Procfile has: web$"),
    ({"Procfile": "web: exec sleep 60\n"}, ["--notify", "web,api"],
     r"^crashonly: error: unknown process type 'api' in --notify; the Procfile has: web$"),
    ({"Procfile": "web: exec sleep 60\n"}, ["-e", "missing.env"],
     r"^crashonly: error: no \.env file at missing\.env"),
    ({}, [], r"^crashonly: error: no Procfile at Procfile"),
    ({"Procfile": "web: exec sleep 60\n", ".env": "A=1\nB\n"}, [],
     r"^crashonly: error: .*\.env:2: expected KEY=value"),
])
def test_bad_input_is_one_clear_line(tmp_path: Path, subprocess_env: dict[str, str],
                                     files: dict[str, str], args: list[str], message: str) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    env = dict(subprocess_env, CRASHONLY_TEST_TAG=f"bad-{tmp_path.name}")
    result = crashonly(["up", "--port", "0", *args], env, tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert __import__("re").search(message, lines[0]), lines[0]
    assert tagged(f"bad-{tmp_path.name}") == []


def test_port_in_use_is_one_clear_line(tmp_path: Path, subprocess_env: dict[str, str]) -> None:
    (tmp_path / "Procfile").write_text("web: exec sleep 60\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = dict(subprocess_env, CRASHONLY_TEST_TAG=f"port-{tmp_path.name}")
        result = crashonly(["up", "--port", str(port)], env, tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"crashonly: error: port {port} on 127.0.0.1 (process type web) is already in use; "
        "stop whatever holds it or choose another base port with --port")
    assert tagged(f"port-{tmp_path.name}") == []


def test_restart_without_a_running_up(tmp_path: Path, subprocess_env: dict[str, str]) -> None:
    (tmp_path / "Procfile").write_text("web: exec sleep 60\n")
    result = crashonly(["restart"], subprocess_env, tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("crashonly: error: no `crashonly up` is running ")
    assert len(result.stderr.strip().splitlines()) == 1
