"""The faults: signals to random processes of the formation, and database restarts.

The killer asks ``up`` which processes are ready (control socket ``status``), picks one at
random and signals its process group (as ``up`` itself does: a process and whatever it forked).
Every signalled process is watched through a pidfd, which becomes readable the moment it exits
even though it is not our child, so the time from SIGTERM to exit is measured exactly. A process
still alive ``stop_timeout`` seconds after SIGTERM ignored it (D3/D4 violated): it gets SIGKILL,
and the kill is marked *escalated*.
"""

from __future__ import annotations

import os
import random
import selectors
import signal
import subprocess
import threading
import time
from dataclasses import dataclass

from ..errors import CrashonlyError
from .record import DbRestart, Kill, ProcessRecord, Recording
from .supervised import Supervised

__all__ = ["Killer", "restart_database"]

SIGNALS = {"TERM": signal.SIGTERM, "KILL": signal.SIGKILL, "INT": signal.SIGINT}


@dataclass(kw_only=True, slots=True)
class _Watch:
    kill: Kill
    fd: int
    deadline: float | None  # monotonic time to escalate a SIGTERM to SIGKILL


class Killer:
    """Sends one signal every ``every`` seconds (±50%, so kills do not phase-lock with the load)
    until :meth:`stop`; watches each signalled process until it is gone."""

    def __init__(self, supervised: Supervised, recording: Recording, *, every: float,
                 signals: list[str], stop_timeout: float, seed: int | None = None) -> None:
        self.supervised = supervised
        self.recording = recording
        self.every = every
        self.signals = signals
        self.stop_timeout = stop_timeout
        self.rng = random.Random(seed)
        self.stopping = threading.Event()
        self.selector = selectors.DefaultSelector()
        self.watches: dict[int, _Watch] = {}  # by pid
        self.lock = threading.Lock()
        self.errors: list[str] = []
        self._threads = [threading.Thread(target=self._kill_loop, name="chaos-killer", daemon=True),
                         threading.Thread(target=self._watch_loop, name="chaos-watcher", daemon=True)]
        supervised.on_ready = self._on_ready

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Stop killing, then wait until every signalled process is gone (escalating if need be)."""
        self.stopping.set()
        self._threads[0].join()
        deadline = time.monotonic() + self.stop_timeout + 5.0
        while time.monotonic() < deadline:
            with self.lock:
                if not self.watches:
                    break
            time.sleep(0.02)
        self._threads[1].join(1.0)

    # --- killing -----------------------------------------------------------------------------
    def _kill_loop(self) -> None:
        while not self.stopping.wait(self.every * self.rng.uniform(0.5, 1.5)):
            try:
                status = self.supervised.status(timeout=2.0)
            except CrashonlyError as exc:
                self.errors.append(f"{self.recording.now():.1f} s: status: {exc}")
                continue
            with self.lock:
                watched = set(self.watches)
            targets = [p for p in status["processes"]
                       if p["state"] == "ready" and p["pid"] not in watched]
            if not targets:
                continue
            target = self.rng.choice(targets)
            self._signal(str(target["name"]), int(target["pid"]), self.rng.choice(self.signals))

    def _signal(self, name: str, pid: int, signame: str) -> None:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return  # gone already (up's status was a moment old)
        kill = Kill(t=self.recording.now(), name=name, pid=pid, signal=signame)
        try:
            os.killpg(pid, SIGNALS[signame])
        except (ProcessLookupError, PermissionError):
            os.close(fd)
            return
        deadline = time.monotonic() + self.stop_timeout if signame != "KILL" else None
        with self.lock:
            self.recording.kills.append(kill)
            self.watches[pid] = _Watch(kill=kill, fd=fd, deadline=deadline)
            self.selector.register(fd, selectors.EVENT_READ, pid)

    def _on_ready(self, record: ProcessRecord) -> None:
        """A new process is ready: the slot of the last kill with its name is back in service."""
        with self.lock:
            for kill in reversed(self.recording.kills):
                if kill.name == record.name and kill.pid != record.pid:
                    if kill.back is None and record.ready_at is not None:
                        kill.back = record.ready_at
                    break

    # --- watching ----------------------------------------------------------------------------
    def _watch_loop(self) -> None:
        while True:
            with self.lock:
                idle = not self.watches
            if idle:
                if self.stopping.is_set() and not self._threads[0].is_alive():
                    return
                time.sleep(0.02)
                continue
            for key, _ in self.selector.select(0.02):
                self._gone(int(key.data))
            now = time.monotonic()
            with self.lock:
                late = [w for w in self.watches.values()
                        if w.deadline is not None and now >= w.deadline]
            for watch in late:
                watch.deadline = None
                watch.kill.escalated = True
                try:
                    os.killpg(watch.kill.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass

    def _gone(self, pid: int) -> None:
        with self.lock:
            watch = self.watches.pop(pid, None)
            if watch is None:
                return
            self.selector.unregister(watch.fd)
            os.close(watch.fd)
            watch.kill.exited = self.recording.now()
            record = self.recording.processes.get(pid)
            if record is not None and watch.kill.signal != "KILL" and not watch.kill.escalated:
                record.stop_seconds = watch.kill.stop_seconds


def restart_database(command: str, recording: Recording, *, timeout: float = 120.0) -> DbRestart:
    """Run the user's database restart command (a shell command line) and record it."""
    t = recording.now()
    started = time.monotonic()
    try:
        done = subprocess.run(command, shell=True, capture_output=True, text=True,
                              errors="replace", timeout=timeout, check=False)
        code, output = done.returncode, (done.stdout + done.stderr)
    except subprocess.TimeoutExpired:
        code, output = -1, f"still running after {timeout:g} s"
    event = DbRestart(t=t, seconds=time.monotonic() - started, returncode=code,
                      output=output.strip()[-2000:])
    with recording.lock:
        recording.db_restarts.append(event)
    return event
