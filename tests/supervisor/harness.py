"""Run a real `crashonly up` in tests: collect its output, signal it, find what it started.

Every process `up` starts inherits ``CRASHONLY_TEST_TAG``; :func:`tagged` finds them in /proc,
so a test can assert that nothing it started is left, and teardown can kill what is.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

from tests.conftest import PYTHON, ROOT

CHILDREN = ROOT / "tests" / "supervisor" / "children"
TAG = "CRASHONLY_TEST_TAG"


def tagged(tag: str) -> list[int]:
    """Pids of live (non-zombie) processes whose environment carries ``tag``."""
    needle = f"{TAG}={tag}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read()
            with open(f"/proc/{entry}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in environ.split(b"\0") and state != b"Z":
            pids.append(int(entry))
    return pids


def wait_until_gone(tag: str, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = tagged(tag)
        if not left:
            return []
        time.sleep(0.05)
    return tagged(tag)


def crashonly(args: list[str], env: dict[str, str], cwd: Path,
              timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "crashonly.cli", *args], env=env, cwd=cwd, text=True,
                          capture_output=True, timeout=timeout)


class Up:
    """A running ``crashonly up``; its stdout+stderr lines are collected by a thread."""

    def __init__(self, workdir: Path, procfile: str, args: list[str], env: dict[str, str]) -> None:
        self.workdir = workdir
        (workdir / "Procfile").write_text(procfile)
        self.tag = uuid.uuid4().hex
        self.env = dict(env, **{TAG: self.tag})
        self.lines: list[str] = []
        self.popen = subprocess.Popen(
            [PYTHON, "-m", "crashonly.cli", "up", "--port", "0", *args], cwd=workdir,
            env=self.env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        try:
            for line in self.popen.stdout:
                self.lines.append(line.rstrip("\n"))
        except (ValueError, OSError):  # closed by teardown while a straggler held the pipe
            pass

    def wait_for(self, pattern: str, timeout: float = 20.0, start: int = 0) -> re.Match[str]:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = start
        while time.monotonic() < deadline:
            while seen < len(self.lines):
                match = rx.search(self.lines[seen])
                if match:
                    return match
                seen += 1
            if self.popen.poll() is not None:
                self._reader.join(1)
                if seen >= len(self.lines):
                    break
            time.sleep(0.01)
        raise AssertionError(f"no line matching {pattern!r} in {timeout} s; got:\n{self.text()}")

    def count(self, pattern: str) -> int:
        rx = re.compile(pattern)
        return sum(1 for line in list(self.lines) if rx.search(line))

    def text(self) -> str:
        return "\n".join(self.lines[-80:])

    def port(self, name: str = "web") -> int:
        return int(self.wait_for(rf"{name} listening on port (\d+)")[1])

    def signal(self, sig: int) -> None:
        self.popen.send_signal(sig)

    def wait(self, timeout: float = 30) -> int:
        code = self.popen.wait(timeout)
        self._reader.join(2)
        return code

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return crashonly(list(args), self.env, self.workdir, timeout=60)

    def close(self) -> None:
        """Teardown: kill up (and its session), then anything it started that is still alive."""
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                pass
        for pid in tagged(self.tag):
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        # The watchdog shares up's stderr: the pipe ends when the last holder is gone.
        self._reader.join(5)
        if self.popen.stdout is not None:
            self.popen.stdout.close()
