"""Real ``crashonly web`` processes for tests: start, wait until ready, signal, clean up."""

from __future__ import annotations

import re
import signal
import socket
from pathlib import Path

from tests.conftest import ROOT
from tests.processes.harness import Proc

READY = re.compile(r"ready on (http://[^ ,]+)")
KEY = "tests-only-not-a-secret-session-key-0123456789"  # long enough (32+), never secret


def listening_socket() -> socket.socket:
    """A listening socket on a free loopback port, held by the test (like ``crashonly up``)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    return sock


class Web(Proc):
    """A ``crashonly web`` subprocess (see :class:`tests.processes.harness.Proc`)."""

    def __init__(self, app: str, env: dict[str, str], *extra: str,
                 sock: socket.socket | None = None, cwd: Path = ROOT) -> None:
        args = ["web", app, *extra]
        pass_fds: tuple[int, ...] = ()
        if sock is not None:
            args += ["--fd", str(sock.fileno())]
            pass_fds = (sock.fileno(),)
        elif "--port" not in extra and "PORT" not in env:
            args += ["--port", "0"]
        super().__init__(args, env, cwd=cwd, pass_fds=pass_fds)
        self.url = ""

    def wait_for(self, pattern: str, timeout: float = 15.0,  # type: ignore[override]
                 start: int = 0) -> re.Match[str]:
        return self.match(pattern, timeout, start)

    def ready(self, timeout: float = 15.0) -> Web:
        self.url = self.wait_for(READY.pattern, timeout).group(1)
        return self

    def signal(self, sig: int = signal.SIGTERM) -> None:
        super().signal(sig)
