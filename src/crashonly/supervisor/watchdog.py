"""Stops every child of a ``crashonly up`` that died without doing so itself (SIGKILL, OOM).

Run by ``up`` as a separate process, in its own process group, with the read end of a pipe on
stdin whose write end only ``up`` holds. ``up`` writes ``+PGID`` when it starts a child and
``-PGID`` when it has reaped one. When the pipe reaches end-of-file, ``up`` is gone (the kernel
closes its descriptors however it died): the watchdog sends SIGTERM to every group still
registered, waits ``--grace`` seconds, then SIGKILLs what remains, and exits.

Why a watchdog rather than only ``PR_SET_PDEATHSIG`` in each child: a parent-death signal must be
set in the child between fork and exec (``preexec_fn``, unsafe once ``up`` has threads) or by the
program itself, so it would not cover arbitrary Procfile commands, nor the processes those
commands fork (the signal is not inherited across fork). Process groups are: this covers both.

This file is run as a script (``python -S -E watchdog.py``) and imports only the standard
library, so it starts in a few milliseconds and does not depend on how crashonly is installed.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time


def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    return True


def _signal(groups: set[int], sig: int) -> None:
    for pgid in groups:
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _say(message: str) -> None:
    """Write to stderr from a daemon thread: a full pipe nobody reads must not stop us from
    stopping the children (the process exits whether or not the line got out)."""
    def write() -> None:
        try:
            os.write(2, f"crashonly up watchdog: {message}\n".encode())
        except OSError:
            pass

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    _said.append(thread)


_said: list[threading.Thread] = []


def main(argv: list[str]) -> int:
    grace = float(argv[argv.index("--grace") + 1]) if "--grace" in argv else 10.0
    # Ctrl-C and the terminal's hang-up are for `up`, which decides; we act only on EOF.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    groups: set[int] = set()
    buffer = b""
    while True:
        try:
            data = os.read(0, 4096)
        except InterruptedError:
            continue
        if not data:
            break
        buffer += data
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line[:1] == b"+":
                groups.add(int(line[1:]))
            elif line[:1] == b"-":
                groups.discard(int(line[1:]))
    groups = {g for g in groups if _alive(g)}
    if not groups:
        return 0
    _say(f"up is gone; stopping {len(groups)} process group(s) {sorted(groups)}")
    _signal(groups, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while groups and time.monotonic() < deadline:
        time.sleep(0.05)
        groups = {g for g in groups if _alive(g)}
    if groups:
        _say(f"SIGKILL to {sorted(groups)} after {grace:g} s")
        _signal(groups, signal.SIGKILL)
    for thread in _said:  # give the lines a moment to get out, no more
        thread.join(0.5)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
