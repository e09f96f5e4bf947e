"""The supervisor's event loop: start the formation, watch it, restart it, stop it.

One thread, one ``selectors`` loop. Everything that happens arrives as a readable descriptor:
child output pipes, each child's ``NOTIFY_SOCKET``, the control socket and its clients, and a
socket that ``signal.set_wakeup_fd`` writes to, so a signal (SIGTERM/SIGINT through
:class:`crashonly.lifecycle.Shutdown`, SIGHUP, SIGCHLD) wakes the loop instead of waiting for a
timeout. Handlers only set flags; exited children are collected with ``waitpid(-1, WNOHANG)``
after every wake-up. Deadlines (backoff, readiness, SIGKILL) set the select timeout.

The formation is a set of *slots* (``web.1``, ``web.2``, ``worker.1``…). A slot has a current
process and, during a rolling restart, a successor: the successor starts, and only when it is
ready does the old process get SIGTERM; one slot at a time. A slot whose process exits
unexpectedly is restarted after ``backoff_base * 2**(failures-1)`` seconds (capped); a process
that stayed ready for ``stable_after`` seconds resets the count, and from ``crash_loop_after``
failures in a row each restart is reported as a crash loop.

Readiness: ``READY=1`` on the child's notify socket. A child that never speaks the protocol
(and is neither a ``crashonly`` command, which always does, nor of a type named with
``--notify``) is taken as ready after it has stayed alive ``ready_after`` seconds. A TCP check
of a web port would prove nothing here: ``up`` holds the listening socket, so the kernel
completes connections into its backlog whether or not any child accepts them. A child that
speaks the protocol but is not ready within ``ready_timeout`` is stopped and replaced (with
backoff).
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..lifecycle import Shutdown, become_subreaper
from . import FormationError
from .control import Connection
from .formation import check_counts, resolve_formation
from .logs import Logs
from .process import Child, spawn
from .procfile import Procfile
from .readiness import NotifySocket

__all__ = ["Manager", "Settings"]

WATCHDOG = Path(__file__).with_name("watchdog.py")
MAX_LINE = 64 * 1024


@dataclass(frozen=True, kw_only=True, slots=True)
class Settings:
    procfile: Procfile
    env: dict[str, str]
    formation: dict[str, int]
    ports: dict[str, int] = field(default_factory=dict)  # per HTTP type, as bound
    timeout: float = 30.0  # SIGTERM → SIGKILL
    ready_timeout: float = 30.0
    ready_after: float = 1.0
    root: Path | None = None
    backoff_base: float = 0.1
    backoff_max: float = 30.0
    stable_after: float = 10.0
    crash_loop_after: int = 3
    notify_types: frozenset[str] = frozenset()  # types that must send READY=1 (--notify)


@dataclass(kw_only=True, slots=True)
class Slot:
    """A place in the formation. Mutable: it changes as processes come and go."""

    type_name: str
    number: int
    current: Child | None = None
    successor: Child | None = None
    failures: int = 0
    start_at: float | None = 0.0  # when to start ``current``; None: nothing scheduled

    @property
    def label(self) -> str:
        return f"{self.type_name}.{self.number}"


class Manager:
    def __init__(self, settings: Settings, logs: Logs, *, listeners: dict[str, socket.socket],
                 control: socket.socket) -> None:
        self.settings = settings
        self.logs = logs
        self.listeners = listeners
        self.control = control
        self.formation = dict(settings.formation)
        self.slots: dict[tuple[str, int], Slot] = {}
        self.children: dict[int, Child] = {}  # by pid: every child not yet reaped
        self.leftovers: dict[int, float | None] = {}  # process groups whose leader exited
        self.selector = selectors.DefaultSelector()
        self.shutdown = Shutdown()
        self.hangup = False
        self.shutting_down = False
        self.killed_any = False
        self.restarting = False
        self.rolling: deque[tuple[str, int]] = deque()
        self.rolling_slot: tuple[str, int] | None = None
        self.rolling_started = 0.0
        self.rolling_done: list[str] = []
        self.waiters: list[Connection] = []
        self.watchdog_pid: int | None = None
        self.watchdog_fd: int | None = None

    # ---- life of the loop -------------------------------------------------------------------

    def run(self) -> int:
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        previous_wakeup = signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        previous_hup = signal.signal(signal.SIGHUP, self._on_hangup)
        previous_chld = signal.signal(signal.SIGCHLD, _ignore)
        self.shutdown.install()
        self.selector.register(wake_r, selectors.EVENT_READ, ("wake", None))
        self.selector.register(self.control, selectors.EVENT_READ, ("control", None))
        try:
            become_subreaper()  # orphans of our children come to us, so we reap them
            self._start_watchdog()
            for name, port in self.settings.ports.items():
                self.logs.info(f"{name} listening on port {port}; every {name} process "
                               f"gets the socket as fd 3 (LISTEN_FDS=1) and PORT={port}")
            counts = " ".join(f"{k}={v}" for k, v in self.formation.items())
            self.logs.info(f"starting {counts} from {self.settings.procfile.path} "
                           f"(pid {os.getpid()})")
            self._loop(wake_r)
        finally:
            self.shutdown.restore()
            signal.signal(signal.SIGHUP, previous_hup)
            signal.signal(signal.SIGCHLD, previous_chld)
            signal.set_wakeup_fd(previous_wakeup)
            self._stop_watchdog()
            for key in list(self.selector.get_map().values()):
                self.selector.unregister(key.fileobj)
            self.selector.close()
            wake_r.close()
            wake_w.close()
        if self.killed_any:
            self.logs.error("stopped; some processes had to be killed (SIGKILL)")
            return 1
        self.logs.info("stopped")
        return 0

    def _loop(self, wake: socket.socket) -> None:
        while True:
            if self.shutdown.requested.is_set() and not self.shutting_down:
                self._begin_shutdown()
            if self.shutdown.immediate.is_set():
                self._kill_all("second signal")
            if self.hangup:
                self.hangup = False
                self.logs.info("SIGHUP: rolling restart of every process")
                self._request_restart(None, None)
            self._reconcile()
            self._advance_rolling()
            if self.shutting_down and not self.children and not self.leftovers:
                return
            for key, _ in self.selector.select(self._timeout()):
                kind, item = key.data
                if kind == "wake":
                    _drain(wake)
                elif kind == "output":
                    self._read_output(item)
                elif kind == "notify":
                    self._read_notify(item)
                elif kind == "control":
                    self._accept()
                elif kind == "client":
                    self._read_client(item)
            self._reap()
            self._check_deadlines()

    def _on_hangup(self, signum: int, frame: object) -> None:
        self.hangup = True  # acted on by the loop: handlers only set flags

    def _timeout(self) -> float:
        now = time.monotonic()
        deadlines = [s.start_at for s in self.slots.values()
                     if s.start_at is not None and s.current is None]
        for child in self.children.values():
            if child.kill_at is not None and not child.killed:
                deadlines.append(child.kill_at)
            elif child.ready_at is None and child.stopping_since is None:
                deadlines.append(child.started + (self.settings.ready_timeout
                                 if child.notify_only else self.settings.ready_after))
        deadlines.extend(d for d in self.leftovers.values() if d is not None)
        if self.leftovers:
            deadlines.append(now + 0.1)  # poll: an emptied group gives no event
        if not deadlines:
            return 1.0
        return max(0.0, min(1.0, min(deadlines) - now))

    # ---- the formation ----------------------------------------------------------------------

    def _reconcile(self) -> None:
        if self.shutting_down:
            return
        now = time.monotonic()
        for process_type in self.settings.procfile.types:
            count = self.formation.get(process_type.name, 0)
            for number in range(1, count + 1):
                key = (process_type.name, number)
                if key not in self.slots:
                    self.slots[key] = Slot(type_name=process_type.name, number=number)
            for key in [k for k in self.slots if k[0] == process_type.name and k[1] > count]:
                slot = self.slots.pop(key)
                for child in (slot.current, slot.successor):
                    if child is not None:
                        self._stop(child, "scaled down")
                if key == self.rolling_slot:
                    self.rolling_slot = None
        for slot in self.slots.values():
            if (slot.current is None and slot.successor is None and slot.start_at is not None
                    and now >= slot.start_at):
                slot.start_at = None
                slot.current = self._start(slot)

    def _start(self, slot: Slot) -> Child | None:
        process_type = self.settings.procfile.get(slot.type_name)
        env = dict(self.settings.env)
        env["CRASHONLY_PROCESS"] = slot.label
        if slot.type_name in self.settings.ports:
            env["PORT"] = str(self.settings.ports[slot.type_name])
        notify: NotifySocket | None = None
        try:
            notify = NotifySocket()
            child = spawn(type_name=slot.type_name, number=slot.number,
                          command=process_type.command, env=env,
                          listener=self.listeners.get(slot.type_name), notify=notify,
                          root=self.settings.root)
        except OSError as exc:  # a failed start, never a crash of `up`: backoff
            if notify is not None:
                notify.close()
            self.logs.error(f"cannot start {slot.label}: {exc}")
            self._failed(slot, None, f"spawn failed: {exc}")
            return None
        if slot.type_name in self.settings.notify_types:
            child.notify_only = True
        self._watch(child.pid)
        self.children[child.pid] = child
        self.selector.register(child.output, selectors.EVENT_READ, ("output", child))
        self.selector.register(notify.sock, selectors.EVENT_READ, ("notify", child))
        self.logs.info(f"started {slot.label} (pid {child.pid}): {process_type.command}")
        return child

    def _stop(self, child: Child, why: str) -> None:
        if child.stopping_since is not None:
            return
        now = time.monotonic()
        child.stopping_since = now
        child.kill_at = now + self.settings.timeout
        self.logs.info(f"stopping {child.label} (pid {child.pid}, {why}): SIGTERM")
        child.signal(signal.SIGTERM)

    def _slot_of(self, child: Child) -> Slot | None:
        slot = self.slots.get((child.type_name, child.number))
        if slot is not None and child in (slot.current, slot.successor):
            return slot
        return None

    def _failed(self, slot: Slot, child: Child | None, reason: str) -> None:
        """Schedule the slot's next start with exponential backoff."""
        now = time.monotonic()
        stable = (child is not None and child.ready_at is not None
                  and now - child.ready_at >= self.settings.stable_after)
        slot.failures = 1 if stable else slot.failures + 1
        delay = min(self.settings.backoff_base * 2 ** (slot.failures - 1),
                    self.settings.backoff_max)
        slot.start_at = now + delay
        if slot.failures >= self.settings.crash_loop_after:
            self.logs.error(f"{slot.label} is crash-looping: {slot.failures} failures in a row "
                            f"(last: {reason}); next start in {delay:.1f} s")
        else:
            self.logs.info(f"restarting {slot.label} in {delay:.1f} s")

    # ---- events -------------------------------------------------------------------------------

    def _read_output(self, child: Child) -> None:
        while child.output >= 0:
            try:
                data = os.read(child.output, 65536)
            except (BlockingIOError, InterruptedError):
                return
            if not data:
                self._close_output(child)
                return
            lines = (child.pending + data).split(b"\n")
            child.pending = lines.pop()
            if len(child.pending) > MAX_LINE:
                lines.append(child.pending)
                child.pending = b""
            for line in lines:
                self.logs.child(child.label, child.type_name, line)

    def _close_output(self, child: Child) -> None:
        if child.output < 0:
            return
        if child.pending:
            self.logs.child(child.label, child.type_name, child.pending)
            child.pending = b""
        self.selector.unregister(child.output)
        os.close(child.output)
        child.output = -1

    def _read_notify(self, child: Child) -> None:
        for assignment in child.notify.receive():
            # A child that speaks the protocol is judged by it: no fallback for it.
            child.notify_only = True
            key, _, value = assignment.partition("=")
            if key == "READY" and value == "1":
                self._ready(child, "READY=1")
            elif key == "STATUS":
                self.logs.info(f"{child.label} status: {value}")

    def _ready(self, child: Child, how: str) -> None:
        if child.ready_at is not None or child.stopping_since is not None or child.exited:
            return
        now = time.monotonic()
        child.ready_at = now
        self.logs.info(f"{child.label} (pid {child.pid}) ready in {now - child.started:.2f} s "
                       f"({how})")
        slot = self._slot_of(child)
        if slot is not None and slot.successor is child:
            old, slot.current, slot.successor = slot.current, child, None
            slot.start_at = None
            if old is not None:
                self._stop(old, f"replaced by pid {child.pid}")
            self.rolling_done.append(slot.label)
            self.rolling_slot = None

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.watchdog_pid:
                self.watchdog_pid = None
                self.logs.error("the watchdog process exited; if up is SIGKILLed now, its "
                                "children will not be stopped")
                continue
            child = self.children.pop(pid, None)
            if child is not None:
                self._exited(child, status)
            # Otherwise an orphan of one of our children, reparented to us: reaped, done.

    def _exited(self, child: Child, status: int) -> None:
        child.exited = True
        self._read_output(child)
        self.selector.unregister(child.notify.sock)
        child.notify.close()
        code = os.waitstatus_to_exitcode(status)
        how = (f"exit code {code}" if code >= 0
               else f"killed by {signal.Signals(-code).name}")
        expected = child.stopping_since is not None
        if _group_alive(child.pid):
            # The leader is gone but something it forked is still in its group.
            if not expected:
                child.signal(signal.SIGTERM)
            deadline = (child.kill_at if child.kill_at is not None
                        else time.monotonic() + self.settings.timeout)
            self.leftovers[child.pid] = deadline
        else:
            self._unwatch(child.pid)
        if expected:
            took = time.monotonic() - (child.stopping_since or 0.0)
            self.logs.info(f"{child.label} (pid {child.pid}) stopped in {took:.2f} s: {how}")
            return
        if self.shutting_down:
            self.logs.info(f"{child.label} (pid {child.pid}) exited: {how}")
            return
        self.logs.error(f"{child.label} (pid {child.pid}) exited unexpectedly: {how}")
        slot = self._slot_of(child)
        if slot is None:
            return
        if slot.successor is child:
            slot.successor = None
            self._rolling_failed(f"{child.label} (pid {child.pid}) exited before it was ready "
                                 f"({how}); the old process keeps running")
        else:
            slot.current = None
            self._failed(slot, child, how)

    def _check_deadlines(self) -> None:
        now = time.monotonic()
        for child in list(self.children.values()):
            if child.kill_at is not None:
                if now >= child.kill_at and not child.killed:
                    self.logs.error(f"{child.label} (pid {child.pid}) still running "
                                    f"{self.settings.timeout:g} s after SIGTERM: SIGKILL")
                    child.signal(signal.SIGKILL)
                    child.killed = True
                    if self.shutting_down:
                        self.killed_any = True
                continue
            if child.ready_at is not None:
                continue
            age = now - child.started
            if not child.notify_only and age >= self.settings.ready_after:
                self._ready(child, f"alive {self.settings.ready_after:g} s; it does not send "
                                   "READY=1")
            elif child.notify_only and age >= self.settings.ready_timeout:
                self.logs.error(f"{child.label} (pid {child.pid}) not ready after "
                                f"{self.settings.ready_timeout:g} s: replacing it")
                slot = self._slot_of(child)
                self._stop(child, "not ready in time")
                if slot is not None and slot.successor is child:
                    slot.successor = None
                    self._rolling_failed(f"{child.label} (pid {child.pid}) was not ready within "
                                         f"{self.settings.ready_timeout:g} s; the old process "
                                         "keeps running")
                elif slot is not None:
                    slot.current = None
                    self._failed(slot, child, "not ready in time")
        for pgid, deadline in list(self.leftovers.items()):
            if not _group_alive(pgid):
                del self.leftovers[pgid]
                self._unwatch(pgid)
            elif deadline is not None and now >= deadline:
                self.logs.error(f"processes left in group {pgid} after its leader exited: "
                                "SIGKILL")
                _killpg(pgid, signal.SIGKILL)
                self.leftovers[pgid] = None
                if self.shutting_down:
                    self.killed_any = True

    # ---- rolling restarts ---------------------------------------------------------------------

    def _request_restart(self, types: list[str] | None, waiter: Connection | None) -> None:
        if self.shutting_down:
            if waiter is not None:
                waiter.reply({"ok": False, "error": "crashonly up is shutting down"})
            return
        keys = sorted(k for k in self.slots if types is None or k[0] in types)
        if not self.restarting:
            self.restarting = True
            self.rolling_started = time.monotonic()
            self.rolling_done = []
        queued = set(self.rolling)
        self.rolling.extend(k for k in keys if k not in queued and k != self.rolling_slot)
        if waiter is not None:
            self.waiters.append(waiter)

    def _advance_rolling(self) -> None:
        if not self.restarting or self.rolling_slot is not None or self.shutting_down:
            return
        while self.rolling:
            key = self.rolling.popleft()
            slot = self.slots.get(key)
            if slot is None or slot.current is None or slot.successor is not None:
                continue  # not running now: its next start runs the new code anyway
            successor = self._start(slot)
            if successor is None:
                self._rolling_failed(f"cannot start a new {slot.label}")
                return
            slot.successor = successor
            self.rolling_slot = key
            return
        took = time.monotonic() - self.rolling_started
        self.logs.info(f"rolling restart done in {took:.2f} s: {' '.join(self.rolling_done)}")
        self._finish_restart({"ok": True, "restarted": self.rolling_done, "seconds": took})

    def _rolling_failed(self, reason: str) -> None:
        self.logs.error(f"rolling restart stopped: {reason}")
        self.rolling.clear()
        self.rolling_slot = None
        self._finish_restart({"ok": False, "error": f"rolling restart stopped: {reason}"})

    def _finish_restart(self, reply: dict[str, Any]) -> None:
        self.restarting = False
        for waiter in self.waiters:
            self._forget_client(waiter)
            waiter.reply(reply)
        self.waiters = []

    # ---- control socket -----------------------------------------------------------------------

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.control.accept()
            except (BlockingIOError, InterruptedError):
                return
            sock.setblocking(False)
            client = Connection(sock)
            if not client.trusted:
                client.reply({"ok": False, "error": "permission denied: not the same user"})
                continue
            self.selector.register(sock, selectors.EVENT_READ, ("client", client))

    def _forget_client(self, client: Connection) -> None:
        try:
            self.selector.unregister(client.sock)
        except (KeyError, ValueError):
            pass

    def _read_client(self, client: Connection) -> None:
        try:
            request = client.read_request()
        except (EOFError, OSError):
            self._forget_client(client)
            if client in self.waiters:
                self.waiters.remove(client)
            client.sock.close()
            return
        if request is None:
            return
        try:
            self._serve(client, request)
        except Exception as exc:  # a bad request is refused; it must never stop the formation
            self.logs.error(f"control request failed: {exc!r}")
            self._forget_client(client)
            if client in self.waiters:
                self.waiters.remove(client)
            client.reply({"ok": False, "error": f"internal error: {exc!r}"})

    def _serve(self, client: Connection, request: dict[str, Any]) -> None:
        op = request.get("op")
        names = self.settings.procfile.names()
        if op == "restart":
            types = request.get("types") or None
            if types is not None and (not isinstance(types, list)
                                      or not all(isinstance(t, str) for t in types)):
                self._forget_client(client)
                client.reply({"ok": False, "error": "types must be a list of process types"})
                return
            unknown = sorted(set(types or []) - set(names))
            if unknown:
                self._forget_client(client)
                client.reply({"ok": False, "error": f"unknown process type "
                              f"{', '.join(map(repr, unknown))}; the Procfile has: "
                              f"{', '.join(names)}"})
                return
            self.logs.info(f"rolling restart requested of {' '.join(types or ['everything'])}")
            self._request_restart(types, client)  # answered when the restart ends
            return
        self._forget_client(client)
        if op == "scale":
            try:
                counts = resolve_formation(check_counts(request.get("counts")), names,
                                           default=None)
            except FormationError as exc:
                client.reply({"ok": False, "error": str(exc)})
                return
            self.formation.update(counts)
            summary = " ".join(f"{k}={v}" for k, v in self.formation.items())
            self.logs.info(f"scaled to {summary}")
            client.reply({"ok": True, "formation": self.formation})
        elif op == "status":
            client.reply({"ok": True, "formation": self.formation, "processes": [
                {"name": c.label, "pid": c.pid,
                 "state": "stopping" if c.stopping_since is not None
                 else "ready" if c.ready_at is not None else "starting"}
                for c in sorted(self.children.values(), key=lambda c: (c.label, c.started))
            ]})
        else:
            client.reply({"ok": False, "error": f"unknown request {op!r}"})

    # ---- shutdown -------------------------------------------------------------------------------

    def _begin_shutdown(self) -> None:
        self.shutting_down = True
        received = self.shutdown.received[:1]
        name = signal.Signals(received[0]).name if received else "request"
        self.logs.info(f"{name}: stopping {len(self.children)} process(es); SIGKILL after "
                       f"{self.settings.timeout:g} s (send it again to kill now)")
        if self.restarting:
            self._rolling_failed("crashonly up is shutting down")
        self.slots.clear()
        for child in list(self.children.values()):
            self._stop(child, "shutting down")
        deadline = time.monotonic() + self.settings.timeout
        for pgid in self.leftovers:
            _killpg(pgid, signal.SIGTERM)
            self.leftovers[pgid] = deadline

    def _kill_all(self, why: str) -> None:
        for child in self.children.values():
            if not child.killed:
                self.logs.error(f"{why}: SIGKILL to {child.label} (pid {child.pid})")
                child.signal(signal.SIGKILL)
                child.killed = True
                self.killed_any = True
        for pgid, deadline in self.leftovers.items():
            if deadline is not None:
                _killpg(pgid, signal.SIGKILL)
                self.leftovers[pgid] = None
                self.killed_any = True

    # ---- the watchdog ---------------------------------------------------------------------------

    def _start_watchdog(self) -> None:
        import sys

        read_end, write_end = os.pipe()  # both close-on-exec: no child inherits them
        try:
            self.watchdog_pid = os.posix_spawn(
                sys.executable,
                [sys.executable, "-S", "-E", str(WATCHDOG), "--grace",
                 str(self.settings.timeout)],
                dict(os.environ),
                file_actions=[(os.POSIX_SPAWN_DUP2, read_end, 0)],
                setpgroup=0,  # not in our group: a kill of up's group must not take it too
                setsigdef=(signal.SIGPIPE, signal.SIGTERM, signal.SIGINT, signal.SIGCHLD),
            )
        finally:
            os.close(read_end)
        self.watchdog_fd = write_end

    def _tell_watchdog(self, line: str) -> None:
        if self.watchdog_fd is None:
            return
        try:
            os.write(self.watchdog_fd, line.encode() + b"\n")
        except OSError:
            os.close(self.watchdog_fd)
            self.watchdog_fd = None

    def _watch(self, pgid: int) -> None:
        self._tell_watchdog(f"+{pgid}")

    def _unwatch(self, pgid: int) -> None:
        self._tell_watchdog(f"-{pgid}")

    def _stop_watchdog(self) -> None:
        if self.watchdog_fd is not None:
            os.close(self.watchdog_fd)  # EOF: with nothing registered it just exits
            self.watchdog_fd = None
        if self.watchdog_pid is not None:
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                try:
                    pid, _ = os.waitpid(self.watchdog_pid, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid:
                    break
                time.sleep(0.01)
            self.watchdog_pid = None


def _ignore(signum: int, frame: object) -> None:
    """SIGCHLD needs a Python handler for ``set_wakeup_fd`` to wake the loop."""


def _drain(sock: socket.socket) -> None:
    try:
        while sock.recv(4096):
            pass
    except (BlockingIOError, InterruptedError):
        pass


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True
