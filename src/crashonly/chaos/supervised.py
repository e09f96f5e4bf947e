"""The user's formation under ``crashonly up``, as the chaos run sees it.

``up`` is started as a subprocess in its own session with ``--port 0`` (the kernel picks the web
port; ``up`` logs it), a short restart backoff (chaos kills on purpose, so three kills in a row
are not a crash loop to back off from), and ``NO_COLOR``. A reader thread parses its output:
``up``'s own lines give every process's pid, start, readiness time (spawn to ``READY=1``) and
end; the children's lines give worker events (``started job=…``) used to count runs of a user
task. Which processes exist right now comes from ``up``'s control socket (``status``).
"""

from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from ..errors import CrashonlyError
from .record import ProcessRecord, Recording

__all__ = ["Supervised"]

_LINE = re.compile(r"^\d\d:\d\d:\d\d (\S+)\s*\| ?(.*)$")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_STARTED = re.compile(r"^started (\S+) \(pid (\d+)\)")
_READY = re.compile(r"^(\S+) \(pid (\d+)\) ready in ([\d.]+) s")
_PORT = re.compile(r"^(\S+) listening on port (\d+)")
_ENDED = re.compile(r"^(\S+) \(pid (\d+)\) (?:exited unexpectedly|exited|stopped in ([\d.]+) s): (.*)$")
_JOB_STARTED = re.compile(r"\bstarted\s+job=(\d+) task=(\S+)")


class Supervised:
    """One ``crashonly up`` running the user's Procfile."""

    def __init__(self, *, procfile: Path, formation: str | None, env: dict[str, str],
                 env_file: Path | None, root: Path | None, stop_timeout: float,
                 recording: Recording, log: IO[str] | None = None) -> None:
        self.procfile = procfile.resolve()
        self.formation = formation
        self.env = env
        self.env_file = env_file
        self.root = root
        self.stop_timeout = stop_timeout
        self.recording = recording
        self.log = log
        self.ports: dict[str, int] = {}
        self.tail: collections.deque[str] = collections.deque(maxlen=60)
        self.job_starts: collections.Counter[int] = collections.Counter()
        self.on_ready: Callable[[ProcessRecord], None] | None = None
        self.proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self._lock = threading.Lock()

    # --- life ------------------------------------------------------------------------------
    def start(self) -> None:
        cmd = [sys.executable, "-m", "crashonly.cli", "up", "-f", str(self.procfile),
               "--port", "0", "-t", f"{self.stop_timeout:g}", "--backoff-max", "0.5"]
        if self.formation:
            cmd += ["--formation", self.formation]
        if self.env_file is not None:
            cmd += ["-e", str(self.env_file)]
        if self.root is not None:
            cmd += ["-d", str(self.root)]
        self.proc = subprocess.Popen(
            cmd, env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, name="chaos-up-reader", daemon=True)
        self._reader.start()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def status(self, timeout: float = 3.0) -> dict[str, Any]:
        from ..supervisor.control import request

        return request(self.procfile, {"op": "status"}, timeout=timeout)

    def wait_ready(self, timeout: float) -> dict[str, int]:
        """Wait until every slot of the formation has a ready process; return the formation."""
        deadline = time.monotonic() + timeout
        last = "no answer from crashonly up"
        while time.monotonic() < deadline:
            if not self.running():
                raise CrashonlyError(self._why("crashonly up exited before the formation was ready"))
            try:
                status = self.status(timeout=1.0)
            except CrashonlyError as exc:
                last = str(exc)
                time.sleep(0.1)
                continue
            formation: dict[str, int] = {k: int(v) for k, v in status["formation"].items()}
            ready = [p for p in status["processes"] if p["state"] == "ready"]
            if len(ready) >= sum(formation.values()) and len(ready) == len(status["processes"]):
                return formation
            waiting = [p["name"] for p in status["processes"] if p["state"] != "ready"]
            last = f"not ready: {', '.join(waiting) or 'processes not started yet'}"
            time.sleep(0.1)
        raise CrashonlyError(self._why(f"the formation was not ready within {timeout:g} s ({last})"))

    def stop(self, timeout: float) -> int | None:
        """SIGTERM ``up`` (which stops every process) and wait; its exit code, or None if it had
        to be killed (its watchdog then stops the children)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code: int | None = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            code = None
        if self._reader is not None:
            self._reader.join(5.0)
        return code

    def kill(self) -> None:
        """Last resort (and teardown after an error): SIGKILL ``up`` and every process it ran."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.proc.wait(10.0)
        with self._lock:
            pids = [p.pid for p in self.recording.processes.values() if p.ended is None]
        for pid in pids:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def _why(self, message: str) -> str:
        tail = "\n".join(f"    {line}" for line in list(self.tail)[-25:])
        return f"{message}; the last lines of crashonly up:\n{tail}" if tail else message

    def last_lines(self, n: int = 25) -> list[str]:
        return list(self.tail)[-n:]

    # --- output --------------------------------------------------------------------------------
    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = _ANSI.sub("", raw.rstrip("\n"))
            self.tail.append(line)
            if self.log is not None:
                try:
                    self.log.write(line + "\n")
                except (OSError, ValueError):
                    pass
            self._parse(line)

    def _parse(self, line: str) -> None:
        m = _LINE.match(line)
        if m is None:
            return
        label, text = m.group(1), m.group(2)
        now = self.recording.now()
        if label != "up":
            job = _JOB_STARTED.search(text)
            if job is not None:
                with self._lock:
                    self.job_starts[int(job.group(1))] += 1
            return
        record: ProcessRecord | None = None
        with self._lock:
            processes = self.recording.processes
            if (m := _STARTED.match(text)) is not None:
                pid = int(m.group(2))
                processes[pid] = ProcessRecord(name=m.group(1), pid=pid, started=now)
            elif (m := _READY.match(text)) is not None:
                record = processes.get(int(m.group(2)))
                if record is not None:
                    record.ready_seconds = float(m.group(3))
                    record.ready_at = now
            elif (m := _ENDED.match(text)) is not None:
                ended = processes.get(int(m.group(2)))
                if ended is not None:
                    ended.ended = now
                    ended.how = m.group(4)
                    if m.group(3) is not None and ended.stop_seconds is None:
                        ended.stop_seconds = float(m.group(3))  # stopped by up (final stop)
            elif (m := _PORT.match(text)) is not None:
                self.ports[m.group(1)] = int(m.group(2))
        if record is not None and self.on_ready is not None:
            self.on_ready(record)
