"""Is a process on this machine still the one that registered? (Death detection, one machine.)

A pid alone is not an identity: pids are reused. A process is identified by its pid, its start
time in clock ticks since boot (``/proc/PID/stat`` field 22) and the boot id, so a reused pid or a
reboot reads as "dead". A zombie (killed, not yet reaped by its parent) is dead too. Where
``/proc`` is missing (macOS), the start time is empty and only the pid is checked.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache

__all__ = ["ProcessIdentity", "hostname", "is_alive", "this_process"]


@dataclass(frozen=True, kw_only=True, slots=True)
class ProcessIdentity:
    host: str
    boot_id: str
    pid: int
    start: str


def hostname() -> str:
    """``socket.gethostname()`` without importing socket (start-up time)."""
    return os.uname().nodename


@cache
def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return ""


def _stat(pid: int) -> tuple[str, str] | None:
    """(state letter, start time) of ``pid``, or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    except OSError:
        return ("?", "")
    # The command name (field 2) may hold spaces and parentheses: split after the last ")".
    fields = data[data.rindex(")") + 2 :].split()
    return fields[0], fields[19]


def this_process() -> ProcessIdentity:
    pid = os.getpid()
    stat = _stat(pid) if os.path.isdir("/proc") else None
    return ProcessIdentity(
        host=hostname(), boot_id=_boot_id(), pid=pid, start=stat[1] if stat else ""
    )


def is_alive(identity: ProcessIdentity) -> bool | None:
    """True or False for a process of this machine; None when it runs elsewhere (unknowable)."""
    if identity.host != hostname():
        return None
    if identity.boot_id and identity.boot_id != _boot_id():
        return False
    if os.path.isdir("/proc"):
        stat = _stat(identity.pid)
        if stat is None:
            return False
        state, start = stat
        if state in ("Z", "X"):
            return False
        return not identity.start or start == identity.start
    try:
        os.kill(identity.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
