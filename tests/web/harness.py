"""Real ``crashonly web`` processes for tests: start, wait until ready, signal, clean up."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

from tests.conftest import PYTHON, ROOT

READY = re.compile(r"ready on (http://[^ ,]+)")


def listening_socket() -> socket.socket:
    """A listening socket on a free loopback port, held by the test (like ``crashonly up``)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    return sock


class Web:
    """A ``crashonly web`` subprocess whose output lines are collected by a thread."""

    def __init__(self, app: str, env: dict[str, str], *extra: str,
                 sock: socket.socket | None = None, cwd: Path = ROOT) -> None:
        args = [PYTHON, "-m", "crashonly.cli", "web", app, *extra]
        pass_fds: tuple[int, ...] = ()
        if sock is not None:
            args += ["--fd", str(sock.fileno())]
            pass_fds = (sock.fileno(),)
        elif "--port" not in extra and "PORT" not in env:
            args += ["--port", "0"]
        self.lines: list[str] = []
        self.popen = subprocess.Popen(
            args, cwd=cwd, env=env, text=True, pass_fds=pass_fds,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.url = ""

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def pid(self) -> int:
        return self.popen.pid

    def wait_for(self, pattern: str, timeout: float = 15.0) -> re.Match[str]:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            while seen < len(self.lines):
                m = rx.search(self.lines[seen])
                if m:
                    return m
                seen += 1
            if self.popen.poll() is not None:
                self._reader.join(1)
                if seen >= len(self.lines):
                    break
            time.sleep(0.005)
        raise AssertionError(f"no line matching {pattern!r}; output:\n{self.text()}")

    def ready(self, timeout: float = 15.0) -> Web:
        self.url = self.wait_for(READY.pattern, timeout).group(1)
        return self

    def text(self) -> str:
        return "\n".join(self.lines[-80:])

    def signal(self, sig: int = signal.SIGTERM) -> None:
        if self.popen.poll() is None:
            os.kill(self.popen.pid, sig)

    def wait(self, timeout: float = 15.0) -> int:
        code = self.popen.wait(timeout)
        self._reader.join(2)
        return code

    def stop(self) -> None:
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.popen.wait(10)
        self._reader.join(2)
        if self.popen.stdout:
            self.popen.stdout.close()
