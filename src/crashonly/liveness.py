"""Is a worker process still alive? (Death detection on one machine: SQLite, and PostgreSQL's
fast path for local workers.)

Two sources, strongest first:

* **A lock the kernel releases on death.** A worker holds a POSIX record lock (``fcntl``) on a
  lock file of its own (:class:`WorkerLock`) for its whole life. Any process that can open the
  file asks for a shared lock: refused means the owner lives, granted means the owner is gone —
  whatever PID namespace, user or ``/proc`` mount either side has, since the kernel keeps the
  lock on the file's inode. POSIX locks (not ``flock``, not OFD locks) because they belong to a
  *process*: a child forked by a job does not inherit them, so it cannot keep a dead worker
  "alive", and they are released as the owner exits, before it is even reaped.

  A worker whose *graceful* stop could not write to the store (a full disk) renames its lock
  file to ``<id>.stopped`` (:meth:`WorkerLock.mark_stopped`) while still holding the lock: a
  rename needs no new data blocks, so it works on a full disk, and the lock moves with the
  inode. Once that lock is free, recovery reads the worker as stopped, not dead, and blames no
  job on it (:func:`stopped_mark`).
* **The process identity**: pid, start time in clock ticks since boot (``/proc/PID/stat``
  field 22), boot id and PID namespace (``/proc/self/ns/pid``). A pid means something only in
  its own namespace: a worker of another namespace (another container on the same host) is
  never judged by pid (:func:`is_alive` answers None, "unknowable"). A reused pid or a reboot
  reads as dead; so does a zombie. A pid that ``/proc`` does not show is not dead until
  ``kill(pid, 0)`` says ``ESRCH``: under ``hidepid=2`` another user's processes are invisible
  but alive (``EPERM``).
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from functools import cache

__all__ = ["ProcessIdentity", "WorkerLock", "hostname", "is_alive", "lock_is_held",
           "pid_namespace", "remove_lock_file", "stopped_mark", "this_process"]


@dataclass(frozen=True, kw_only=True, slots=True)
class ProcessIdentity:
    host: str
    boot_id: str
    pid: int
    start: str
    pid_ns: str = ""  # "" when unknown (registered by an older crashonly, or no /proc)


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


def pid_namespace() -> str:
    """This process's PID namespace, e.g. ``pid:[4026531836]`` ("" without /proc). Not cached:
    a process forked after ``unshare(CLONE_NEWPID)`` lives in the new one."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _stat(pid: int) -> tuple[str, str] | None:
    """(state letter, start time) of ``pid``, or None if there is no such process. A process
    hidden from this ``/proc`` (``hidepid``, or a /proc of another namespace) is confirmed
    with ``kill(pid, 0)``: it exists unless the kernel answers ``ESRCH``."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            data = f.read()
    except FileNotFoundError:
        return ("?", "") if _exists(pid) else None
    except OSError:
        return ("?", "")
    # The command name (field 2) may hold spaces and parentheses: split after the last ")".
    fields = data[data.rindex(")") + 2 :].split()
    return fields[0], fields[19]


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno != errno.ESRCH  # EPERM: it exists, it is someone else's
    return True


def this_process() -> ProcessIdentity:
    pid = os.getpid()
    stat = _stat(pid) if os.path.isdir("/proc") else None
    return ProcessIdentity(
        host=hostname(), boot_id=_boot_id(), pid=pid, start=stat[1] if stat else "",
        pid_ns=pid_namespace(),
    )


def is_alive(identity: ProcessIdentity) -> bool | None:
    """True or False for a process of this machine and PID namespace; None when its pid means
    nothing here (another machine or namespace): only its lock or lease can tell."""
    if identity.host != hostname():
        return None
    if identity.boot_id and identity.boot_id != _boot_id():
        return False
    if identity.pid_ns and identity.pid_ns != pid_namespace():
        return None
    if os.path.isdir("/proc"):
        stat = _stat(identity.pid)
        if stat is None:
            return False
        state, start = stat
        if state in ("Z", "X"):
            return False
        return not identity.start or state == "?" or start == identity.start
    return _exists(identity.pid)


# --- the kernel-released lock -----------------------------------------------------------------
_held: dict[str, int] = {}  # lock files this process holds: path -> fd


class WorkerLock:
    """An exclusive POSIX record lock on ``path``, held until :meth:`release` or death.

    The file is created readable by all (it holds nothing) so that workers of other users can
    probe it; its folder is created with the permissions of the folder it sits in."""

    def __init__(self, path: str) -> None:
        import fcntl

        self.path = path
        folder = os.path.dirname(path)
        if not os.path.isdir(folder):
            try:
                os.mkdir(folder)
                parent = os.stat(os.path.dirname(folder))
                os.chmod(folder, parent.st_mode & 0o7777)  # whoever may write beside the DB
            except FileExistsError:
                pass
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            os.fchmod(fd, 0o644)  # despite the umask: others must be able to probe it
        except OSError:
            pass
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise
        self.fd = fd
        _held[path] = fd

    def release(self) -> None:
        """Unlink, then unlock (by closing): a prober never sees a free lock of a live worker
        that just left."""
        if _held.pop(self.path, None) is None:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self.fd)

    def mark_stopped(self) -> None:
        """Say "stopped, not died" without writing a byte: rename the lock file to its
        :func:`stopped_mark`, keeping the lock (held on the inode) until this process exits."""
        if _held.get(self.path) != self.fd:
            return
        mark = stopped_mark(self.path)
        try:
            os.rename(self.path, mark)
        except OSError:
            return  # judged as a death, as before
        del _held[self.path]
        _held[mark] = self.fd
        self.path = mark


def stopped_mark(lock_path: str) -> str:
    """The name a gracefully stopped worker's lock file is renamed to."""
    return lock_path.removesuffix(".lock") + ".stopped"


def lock_is_held(path: str) -> bool | None:
    """True if a live process holds the lock file ``path``, False if its owner is gone, None
    if there is no such file (or it cannot be read). A stale file is left for the caller to
    remove once it has acted on the death (:func:`remove_lock_file`)."""
    if path in _held:
        # Never probe our own lock: POSIX locks of one process do not conflict, and closing
        # any descriptor of the file would drop the lock we hold.
        return True
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EAGAIN):
                return True
            return None
        return False
    finally:
        os.close(fd)


def remove_lock_file(path: str) -> None:
    """Remove the lock file of a worker found dead (ids are never reused: nobody takes it)."""
    try:
        os.unlink(path)
    except OSError:
        pass
