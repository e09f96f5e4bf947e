"""The faults: signals to random processes of the formation, and database restarts.

The killer asks ``up`` which processes are ready (control socket ``status``), picks one at
random and signals its process group (as ``up`` itself does: a process and whatever it forked).
Every signalled process is watched through a pidfd, which becomes readable the moment it exits
even though it is not our child, so the time from SIGTERM to exit is measured exactly. A process
still alive ``stop_timeout`` seconds after SIGTERM ignored it (D3/D4 violated): it gets SIGKILL,
and the kill is marked *escalated*.

A SIGKILL is excused for exactly the HTTP requests it cut, so before it the process group is
frozen (SIGSTOP: it can accept, answer or close nothing more) and the connections it holds are
read from ``/proc`` (its socket descriptors, matched by inode with ``/proc/<pid>/net/tcp``): the
client ports of those on a web port are recorded with the kill (see verify.py).
"""

from __future__ import annotations

import contextlib
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
            if signame == "KILL":
                kill.cut_ports = self._freeze(pid)
                kill.t = self.recording.now()
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
                    watch.kill.cut_ports = self._freeze(watch.kill.pid)
                    os.killpg(watch.kill.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass

    def _freeze(self, pgid: int) -> list[int]:
        """SIGSTOP the group, wait until it is stopped, return the client ports of the HTTP
        connections it holds (the caller SIGKILLs it next)."""
        os.killpg(pgid, signal.SIGSTOP)
        return held_connections(group_pids(pgid, stopped=True),
                                set(self.supervised.ports.values()))

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


def group_pids(pgid: int, *, stopped: bool = False, timeout: float = 1.0) -> list[int]:
    """The processes of group ``pgid``; with ``stopped``, once all are seen stopped (a SIGSTOP
    is pending until the target next leaves the kernel) or ``timeout`` passed."""
    deadline = time.monotonic() + timeout
    while True:
        members: dict[int, str] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid:
                members[int(entry)] = fields[0].decode()
        if not stopped or time.monotonic() > deadline or all(
                state in ("T", "t", "Z", "X") for state in members.values()):
            return list(members)
        time.sleep(0.001)


def held_connections(pids: list[int], ports: set[int]) -> list[int]:
    """Remote ports of the TCP connections ``pids`` hold whose local port is in ``ports``."""
    inodes: set[str] = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
        except OSError:
            continue
    remote: set[int] = set()
    for pid in pids[:1]:  # one network namespace for the group
        for table in ("tcp", "tcp6"):
            try:
                with open(f"/proc/{pid}/net/{table}") as f:
                    lines = f.read().splitlines()[1:]
            except OSError:
                continue
            for line in lines:
                fields = line.split()
                local, peer, state, inode = fields[1], fields[2], fields[3], fields[9]
                if state == "0A":  # LISTEN: the shared socket itself, not a connection
                    continue
                if inode in inodes and int(local.rsplit(":", 1)[1], 16) in ports:
                    remote.add(int(peer.rsplit(":", 1)[1], 16))
    return sorted(remote)


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
