"""`crashonly up` against a hostile local user and a hostile reader of its output.

The squatters run as ``nobody`` (with ``runuser``): abstract unix socket names have no
permissions, so any user can bind any free name, and connect to any bound one.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from crashonly.supervisor import ControlError
from crashonly.supervisor.control import request, socket_prefix
from tests.conftest import PYTHON
from tests.supervisor.harness import Up, crashonly

UpFactory = Callable[..., Up]
SYSTEM_PYTHON = "/usr/bin/python3"  # readable by nobody, unlike a virtualenv under /work

# Binds every name given on the command line (a stream socket that answers every line with a
# fake success) and says "ready". As nobody, it stands for any other local user.
SQUATTER = r"""
import json, select, socket, sys
FAKE = {"ok": True, "formation": {"web": 99}, "processes": [], "restarted": ["web.1"],
        "seconds": 0.0}
held, servers = [], []
for name in sys.argv[1:]:
    kind = socket.SOCK_DGRAM if name.startswith("dgram:") else socket.SOCK_STREAM
    s = socket.socket(socket.AF_UNIX, kind)
    try:
        s.bind("\0" + name.removeprefix("dgram:"))
    except OSError:
        continue
    held.append(s)
    if kind == socket.SOCK_STREAM:
        s.listen(16)
        servers.append(s)
print("ready", flush=True)
while True:
    for s in select.select(servers, [], [], 1.0)[0]:
        c, _ = s.accept()
        c.settimeout(2)
        try:
            c.recv(65536)
            c.sendall(json.dumps(FAKE).encode() + b"\n")
        except OSError:
            pass
        c.close()
"""


def _runuser_works() -> bool:
    if os.getuid() != 0 or not os.path.exists(SYSTEM_PYTHON):
        return False
    try:
        return subprocess.run(["runuser", "-u", "nobody", "--", SYSTEM_PYTHON, "-c", "1"],
                              capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


needs_nobody = pytest.mark.skipif(not _runuser_works(),
                                  reason="needs root and runuser to act as another user")


@pytest.fixture
def squat() -> Iterator[Callable[..., None]]:
    """Start a squatter as nobody on the given abstract names; killed at teardown."""
    started: list[subprocess.Popen[str]] = []

    def start(*names: str) -> None:
        proc = subprocess.Popen(["runuser", "-u", "nobody", "--", SYSTEM_PYTHON, "-c", SQUATTER,
                                 *names], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                text=True, cwd="/", start_new_session=True)
        started.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"

    yield start
    for proc in started:
        os.killpg(proc.pid, signal.SIGKILL)  # runuser does not pass signals on to its child
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def _as_nobody(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runuser", "-u", "nobody", "--", SYSTEM_PYTHON, "-c", code],
                          capture_output=True, text=True, timeout=20, cwd="/")


@needs_nobody
def test_squatted_readiness_names_do_not_stop_a_restart(up: UpFactory, squat: Callable[..., None]
                                                       ) -> None:
    """The old names were @crashonly/<pid of up>/<serial>: taking the next ones made the next
    start fail with EADDRINUSE, `up` crash, and the watchdog stop every child."""
    proc = up("sleeper: exec sleep 60\nother: exec sleep 60\n")
    first = int(proc.wait_for(r"started sleeper\.1 \(pid (\d+)\)")[1])
    proc.wait_for(r"other\.1 .* ready")
    squat(*(f"dgram:crashonly/{proc.popen.pid}/{n}" for n in range(1, 200)))
    os.kill(first, signal.SIGKILL)
    second = int(proc.wait_for(r"started sleeper\.1 \(pid (\d+)\)",
                               start=proc.lines.index(next(
                                   line for line in proc.lines if f"pid {first})" in line)) + 1)[1])
    assert second != first
    proc.wait_for(rf"sleeper\.1 \(pid {second}\) ready")
    assert proc.popen.poll() is None, proc.text()
    assert proc.count(r"EADDRINUSE|Address already in use|Traceback") == 0, proc.text()


@needs_nobody
def test_a_squatted_control_name_neither_blocks_up_nor_answers_for_it(
        up: UpFactory, squat: Callable[..., None], tmp_path: Path) -> None:
    prefix = socket_prefix(tmp_path / "Procfile")
    # The old name (a hash of the Procfile path), and a fake under the new prefix.
    squat(prefix.rstrip("/"), prefix + "0" * 32, prefix + "fake")
    proc = up("worker: exec sleep 60\n")
    proc.wait_for(r"worker\.1 .* ready")
    assert proc.popen.poll() is None, proc.text()
    result = proc.ctl("scale", "worker=2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "worker=2"  # the real up's answer, not the fake web=99
    proc.wait_for(r"scaled to worker=2")
    proc.wait_for(r"worker\.2 .* ready")
    restarted = proc.ctl("restart")
    assert restarted.returncode == 0, restarted.stderr
    assert restarted.stdout.startswith("restarted worker.1 worker.2 in ")


@needs_nobody
def test_a_fake_up_of_another_user_is_refused(squat: Callable[..., None], tmp_path: Path,
                                              subprocess_env: dict[str, str]) -> None:
    (tmp_path / "Procfile").write_text("web: exec sleep 60\n")
    prefix = socket_prefix(tmp_path / "Procfile")
    squat(prefix.rstrip("/"), prefix + "fake")
    for command in (["restart"], ["scale", "web=2"], ["scale"]):
        result = crashonly(command, subprocess_env, tmp_path)
        assert result.returncode == 1, result.stdout
        assert result.stderr.startswith("crashonly: error: no `crashonly up` is running "), (
            result.stderr)


@needs_nobody
def test_up_answers_no_other_user(up: UpFactory, tmp_path: Path) -> None:
    proc = up("worker: exec sleep 60\n")
    proc.wait_for(r"worker\.1 .* ready")
    prefix = socket_prefix(tmp_path / "Procfile")
    result = _as_nobody(f"""
import socket
name = [l.split()[7][1:] for l in open("/proc/net/unix") if "@{prefix}" in l][0]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect("\\0" + name)
try:
    s.sendall(b'{{"op": "scale", "counts": {{"worker": 0}}}}\\n')
except BrokenPipeError:
    pass  # up may refuse (reply and close) before reading anything
print(s.recv(4096).decode())
""")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"ok": False,
                                         "error": "permission denied: not the same user"}
    assert proc.count("scaled to") == 0


@pytest.mark.parametrize(("message", "error"), [
    ({"op": "scale", "counts": {"worker": "1"}}, "the count must be an integer"),
    ({"op": "scale", "counts": {"worker": True}}, "the count must be an integer"),
    ({"op": "scale", "counts": {"worker": 100}}, "between 0 and 64"),
    ({"op": "scale", "counts": {"worker": -1}}, "between 0 and 64"),
    ({"op": "scale", "counts": {"worker": 1.5}}, "the count must be an integer"),
    ({"op": "scale", "counts": ["worker", 1]}, "counts must be"),
    ({"op": "scale", "counts": {"worker=1": 1}}, "bad process type"),
    ({"op": "scale"}, "counts must be"),
    ({"op": "restart", "types": "worker"}, "types must be a list"),
    ({"op": "restart", "types": [1]}, "types must be a list"),
    ({"op": ["restart"]}, "unknown request"),
    ({"op": "shutdown"}, "unknown request"),
])
def test_malformed_control_requests_are_refused(up: UpFactory, tmp_path: Path,
                                                message: dict[str, object], error: str) -> None:
    proc = up("worker: exec sleep 60\n")
    proc.wait_for(r"worker\.1 .* ready")
    with pytest.raises(ControlError, match=error):
        request(tmp_path / "Procfile", message, timeout=10)
    # Not JSON, JSON but not an object, nested past the parser's depth: refused too.
    prefix = socket_prefix(tmp_path / "Procfile")
    with open("/proc/net/unix") as table:
        name = next(line.split()[7][1:] for line in table if f"@{prefix}" in line)
    for junk in (b"\xff\xfe not json\n", b"[1, 2]\n", b"[" * 30000 + b"\n"):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect("\0" + name)
            sock.sendall(junk)
            assert json.loads(sock.recv(4096))["ok"] is False
    assert request(tmp_path / "Procfile", {"op": "status"}, timeout=10)["formation"] == {
        "worker": 1}
    assert proc.popen.poll() is None, proc.text()
    assert proc.count("Traceback") == 0, proc.text()


def test_up_stops_in_bounded_time_when_nobody_reads_its_output(tmp_path: Path,
                                                              subprocess_env: dict[str, str]
                                                              ) -> None:
    """Before: `up` blocked writing to the full pipe, so it neither restarted children nor
    obeyed SIGTERM."""
    (tmp_path / "Procfile").write_text(
        "chatty: while :; do seq 1 3000; sleep 0.02; done\n")
    proc = subprocess.Popen([PYTHON, "-m", "crashonly.cli", "up", "--port", "0", "-t", "5"],
                            cwd=tmp_path, env=subprocess_env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        time.sleep(2.5)  # ~60 kB/s of output: the 64 kB pipe is long full
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        try:
            code = proc.wait(10)
        except subprocess.TimeoutExpired:
            pytest.fail("`up` did not stop within 10 s of SIGTERM with its stdout pipe full")
        assert time.monotonic() - started < 8
        assert code == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        assert proc.stdout is not None
        proc.stdout.close()


def test_logs_drop_lines_rather_than_block(tmp_path: Path) -> None:
    from crashonly.supervisor.logs import Logs

    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    with open(write_end, "wb", buffering=0) as stream:
        logs = Logs(["web"], stream=stream, colour=False, limit=64 * 1024)  # type: ignore[arg-type]
        started = time.monotonic()
        for n in range(20000):  # 2 MB: far more than the pipe and the buffer hold
            logs.child("web.1", "web", b"x" * 90 + str(n).encode())
        assert time.monotonic() - started < 5  # never waited for a reader
        logs.info("after the flood")
        received = b""
        deadline = time.monotonic() + 10
        while b"after the flood" not in received and time.monotonic() < deadline:
            try:
                received += os.read(read_end, 1 << 20)
            except BlockingIOError:
                time.sleep(0.01)
        logs.close()
    os.close(read_end)
    text = received.decode()
    assert "after the flood" in text
    dropped = [line for line in text.splitlines() if "line(s) dropped" in line]
    assert dropped
    kept = sum(1 for line in text.splitlines() if "| xxx" in line)
    assert kept + sum(int(line.split("| ")[1].split()[0]) for line in dropped) == 20000
    assert sys.getsizeof(text) < 4 << 20
