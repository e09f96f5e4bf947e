"""The heartbeat helper: renews a worker's leases while the worker cannot, outside its GIL.

A job that holds the GIL in one long C call (a pathological regular expression, a huge
integer's ``str``, a C extension that never releases it) stops every thread of its worker,
the keeper included: its leases ran out, another worker ran the job again, and the first
one's ack was refused. (Pure-Python code is fine: the interpreter switches threads.)

So each worker starts one small helper process after it is ready (this module's
:func:`main`; ``$CRASHONLY_HEARTBEAT_HELPER=0`` turns it off).
The keeper writes one byte to the helper's stdin on every turn (about twice a second). When
no byte has come for ``late`` seconds, the helper renews the leases of every job the store
says the worker holds, and its heartbeat, every ``late`` seconds until the keeper is back:

* only while the worker process is alive and *running*: a stopped process (SIGSTOP, a
  debugger) is a stall, and its leases must run out so that other workers take its jobs;
* a renewal by worker id, not by token: the helper cannot know which tokens are current,
  and it acts only while the keeper cannot (its own renewals by token resume after);
* stdin's end (the worker exited or was killed) ends the helper; it ignores SIGTERM and
  SIGINT so that it keeps renewing through the worker's shutdown grace.

A hung worker whose process still runs keeps its jobs, as a hung pure-Python job always did
(its keeper renews them): the lease protects against death and stalls, not against hangs.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time

__all__ = ["Helper", "main"]

ENV = "CRASHONLY_HEARTBEAT_HELPER"
# Not ``-m``: this module is imported by the package first, which runpy warns about.
_MAIN = "import sys; from crashonly.worker.heartbeat import main; sys.exit(main())"


class Helper:
    """The worker's side: start the helper, tick it, and let it go with the process."""

    def __init__(self, url: str, worker_id: str, late: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _MAIN], stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL, close_fds=True,
        )
        assert self.proc.stdin is not None
        self.fd = self.proc.stdin.fileno()
        # The URL goes through the pipe, not argv: it may hold a password (``ps`` shows argv).
        config = {"url": url, "worker": worker_id, "pid": os.getpid(), "late": late}
        os.write(self.fd, json.dumps(config).encode() + b"\n")
        os.set_blocking(self.fd, False)

    def tick(self) -> None:
        try:
            os.write(self.fd, b".")
        except (BlockingIOError, BrokenPipeError, OSError):
            pass  # a helper that is gone or behind changes nothing for the worker

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass
        try:
            self.proc.wait(1.0)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _running(pid: int) -> bool | None:
    """True if ``pid`` runs, False if it is stopped, None if it is gone (or a zombie)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return True
    if state in ("Z", "X"):
        return None
    return state not in ("T", "t")


def main() -> int:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    fd = sys.stdin.fileno()
    line = b""
    while not line.endswith(b"\n"):
        chunk = os.read(fd, 4096)
        if not chunk:
            return 0
        line += chunk
    head = line.partition(b"\n")[0]
    config = json.loads(head)
    worker, pid, late = config["worker"], int(config["pid"]), float(config["late"])
    from ..backends import open_backend

    # Opened now (the driver imported, nothing connected): a renewal must not wait for imports.
    backend = open_backend(config["url"], create=False)
    while True:
        readable, _, _ = select.select([fd], [], [], late)
        if readable:
            if not os.read(fd, 4096):
                return 0  # the worker is gone
            continue
        state = _running(pid)
        if state is None:
            return 0
        if not state:
            continue  # paused: a stall, let its leases run out
        try:
            now = time.time()
            backend.touch_worker(worker, now=now)
            backend.heartbeat(worker, now=now)
        except Exception:  # the store is away: try again in ``late`` seconds
            pass


if __name__ == "__main__":
    sys.exit(main())
