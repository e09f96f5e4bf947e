"""One child process: how it is spawned, and what ``up`` knows about it.

Spawning uses ``os.posix_spawn`` rather than ``subprocess`` with a ``preexec_fn``: the file
actions put the listening socket on fd 3, the log pipe on fds 1 and 2 and ``/dev/null`` on fd 0;
``setpgroup`` gives the child its own process group (so stopping a child reaches whatever it
forked, and a terminal's Ctrl-C reaches only ``up``); ``setsigdef`` undoes the signal
dispositions Python set in ``up`` (``SIGPIPE`` ignored, our handlers). No Python code runs
between fork and exec, so there is nothing unsafe about threads.

The command runs under ``/bin/sh -c`` (``$PORT`` and friends expand as in foreman). When it is
a simple command we prefix it with ``exec`` so the shell *becomes* the program: signals reach it
directly, and ``LISTEN_PID`` (set by the shell to ``$$``) names the process that will use the
socket, as systemd socket activation requires. A compound command (``a && b``, pipes) keeps its
shell; it still gets the signals, through its process group.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import time
from pathlib import Path

from .readiness import NotifySocket
from .sockets import CHILD_FD

__all__ = ["Child", "shell_script", "spawn", "speaks_notify"]

_ASSIGNMENTS = re.compile(r"""^\s*((?:[A-Za-z_][A-Za-z0-9_]*=(?:'[^']*'|"[^"]*"|[^\s'"])*\s+)*)""")
_RESERVED = {"if", "for", "while", "until", "case", "{", "!", "exec", "function", "select"}
_CRASHONLY = re.compile(r"^(?:\S+/)?crashonly\s|-m\s+crashonly\b")

# Dispositions a child must not inherit from the Python process that spawned it.
_RESET_SIGNALS = tuple(
    s for s in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGTERM, signal.SIGINT, signal.SIGHUP,
                signal.SIGCHLD, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
)


def shell_script(command: str, *, listen_pid: bool, root: Path | None) -> str:
    """The ``sh -c`` script for ``command``: optional ``cd``, ``LISTEN_PID``, then ``exec``."""
    lines = []
    if root is not None:
        lines.append(f"cd -- {shlex.quote(str(root))} || exit 127")
    if listen_pid:
        lines.append("LISTEN_PID=$$; export LISTEN_PID")
    prefix = _ASSIGNMENTS.match(command)
    assignments = prefix.group(1) if prefix else ""
    rest = command[len(assignments):]
    words = rest.split(None, 1)
    if rest and not _is_compound(rest) and words and words[0] not in _RESERVED:
        lines.append(f"{assignments}exec {rest}")
    else:
        lines.append(command)
    return "\n".join(lines)


def _is_compound(command: str) -> bool:
    """Whether ``command`` has an unquoted list, pipe, background or subshell operator.
    (Redirections and substitutions are fine after ``exec``.)"""
    quote = ""
    escaped = False
    for char in command:
        if escaped:
            escaped = False
        elif char == "\\" and quote != "'":
            escaped = True
        elif quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char in ";&|()\n":
            return True
    return False


def speaks_notify(command: str) -> bool:
    """Whether ``command`` runs crashonly, whose processes always send ``READY=1``."""
    prefix = _ASSIGNMENTS.match(command)
    rest = command[len(prefix.group(1)) if prefix else 0:].removeprefix("exec ").lstrip()
    return bool(_CRASHONLY.search(rest))


class Child:
    """A running (or just exited) child. Mutable: it is a process, not a value."""

    def __init__(self, *, type_name: str, number: int, pid: int, output: int,
                 notify: NotifySocket, notify_only: bool) -> None:
        self.type_name = type_name
        self.number = number
        self.pid = pid
        self.output = output  # read end of the child's stdout+stderr pipe
        self.notify = notify
        self.notify_only = notify_only  # readiness only by READY=1 (no fallback check)
        self.started = time.monotonic()
        self.ready_at: float | None = None
        self.stopping_since: float | None = None
        self.kill_at: float | None = None
        self.killed = False
        self.exited = False
        self.pending = b""  # a partial output line

    @property
    def label(self) -> str:
        return f"{self.type_name}.{self.number}"

    def __repr__(self) -> str:
        return f"<Child {self.label} pid={self.pid}>"

    def signal(self, sig: int) -> None:
        """Signal the child's whole process group (it and anything it forked)."""
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:  # the group died and its id was taken by a stranger's group
            pass


def spawn(*, type_name: str, number: int, command: str, env: dict[str, str],
          listener: socket.socket | None, notify: NotifySocket, root: Path | None) -> Child:
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    env = dict(env)
    env["NOTIFY_SOCKET"] = notify.address
    actions: list[tuple[int, int, int] | tuple[int, int, str, int, int]] = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_DUP2, write_end, 1),
        (os.POSIX_SPAWN_DUP2, write_end, 2),
    ]
    if listener is not None:
        actions.append((os.POSIX_SPAWN_DUP2, listener.fileno(), CHILD_FD))
        env["LISTEN_FDS"] = "1"
        env["LISTEN_FDNAMES"] = type_name
    else:
        for name in ("LISTEN_FDS", "LISTEN_FDNAMES", "LISTEN_PID"):
            env.pop(name, None)
    script = shell_script(command, listen_pid=listener is not None, root=root)
    try:
        pid = os.posix_spawn(
            "/bin/sh", ["/bin/sh", "-c", script], env, file_actions=actions,
            setpgroup=0, setsigdef=_RESET_SIGNALS, setsigmask=(),
        )
    finally:
        os.close(write_end)
    return Child(type_name=type_name, number=number, pid=pid, output=read_end, notify=notify,
                 notify_only=speaks_notify(command))
