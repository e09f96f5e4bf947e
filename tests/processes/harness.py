"""Real worker processes for tests: start, read their log lines, signal them, clean up."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tests.conftest import PYTHON, ROOT

APPS = ROOT / "tests" / "apps"


class Proc:
    """A ``crashonly`` subprocess (own session) whose output lines a thread collects.
    tests/web/harness.Web is one too."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path = APPS,
                 pass_fds: tuple[int, ...] = (), wrap: tuple[str, ...] = (),
                 python: str = PYTHON) -> None:
        """``wrap``: a command prefix (``unshare ...``, ``runuser ...``)."""
        self.args = args
        self.lines: list[str] = []
        self.started = time.monotonic()
        self.popen = subprocess.Popen(
            [*wrap, python, "-m", "crashonly.cli", *args], cwd=cwd, env=env, text=True,
            pass_fds=pass_fds, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def pid(self) -> int:
        return self.popen.pid

    def match(self, pattern: str, timeout: float = 10.0, start: int = 0) -> re.Match[str]:
        """The first output line (from ``start``) matching ``pattern``, waiting up to
        ``timeout``; fails the test with the output if none comes."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = start
        while time.monotonic() < deadline:
            while seen < len(self.lines):
                found = rx.search(self.lines[seen])
                if found:
                    return found
                seen += 1
            if self.popen.poll() is not None and seen >= len(self.lines):
                self._reader.join(1)
                if seen >= len(self.lines):
                    break
            time.sleep(0.005)
        raise AssertionError(f"no line matching {pattern!r} in {timeout} s; got:\n" + self.text())

    def wait_for(self, pattern: str, timeout: float = 10.0, start: int = 0) -> str:
        return self.match(pattern, timeout, start).string

    def text(self) -> str:
        return "\n".join(self.lines[-60:])

    def signal(self, sig: int) -> None:
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


def worker(db_url: str, env: dict[str, str], *extra: str, app: str = "workapp:app") -> Proc:
    env = dict(env, DATABASE_URL=db_url)
    return Proc(["worker", app, *extra], env)


def effects(db_path: str) -> dict[str, int]:
    """How many times each key's effect committed."""
    conn = sqlite3.connect(db_path, timeout=30)
    try:
        rows = conn.execute("SELECT key, count(*) FROM effects GROUP BY key").fetchall()
    except sqlite3.OperationalError:
        return {}
    finally:
        conn.close()
    return dict(rows)


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()
