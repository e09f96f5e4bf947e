"""A crashonly process dies with its parent only when a supervisor asked for it.

By default `nohup crashonly worker … &` in a script keeps running when the script ends (it
used to get SIGTERM from PR_SET_PDEATHSIG, and only if the shell outlived its start-up).
With CRASHONLY_DIE_WITH_PARENT=1 or --die-with-parent it stops gracefully when the parent
dies. (Under `crashonly up` the watchdog does this: tests/supervisor.)
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import PYTHON
from tests.processes.harness import APPS

COMMANDS = {
    "worker": ["worker", "workapp:app"],
    "web": ["web", "tests.web.apps:hello", "--port", "0"],
}
READY = {"worker": "ready", "web": "ready on http"}
STOPPING = {"worker": "SIGTERM", "web": "draining"}


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def _in_background(kind: str, extra: list[str], env: dict[str, str], tmp_path: Path) -> int:
    """Start the command in the background of a bash script that waits until it is ready,
    then exits; returns the command's pid (it is no longer our descendant)."""
    log, pidfile = tmp_path / f"{kind}.log", tmp_path / f"{kind}.pid"
    command = shlex.join([PYTHON, "-m", "crashonly.cli", *COMMANDS[kind], *extra])
    script = (f"nohup {command} > {log} 2>&1 & echo $! > {pidfile}; "
              f"for _ in $(seq 300); do grep -q {shlex.quote(READY[kind])} {log} && break; "
              "sleep 0.05; done; sleep 0.2")
    subprocess.run(["bash", "-c", script], env=env, cwd=APPS, timeout=30, check=True)
    return int(pidfile.read_text())


@pytest.mark.parametrize("kind", ["worker", "web"])
def test_a_background_process_outlives_its_shell(kind: str, subprocess_env: dict[str, str],
                                                 db_url: str, tmp_path: Path) -> None:
    env = dict(subprocess_env, DATABASE_URL=db_url, CRASHONLY_SECRET_KEY="k" * 32)
    pid = _in_background(kind, [], env, tmp_path)
    try:
        time.sleep(1.5)
        log = (tmp_path / f"{kind}.log").read_text()
        assert READY[kind] in log, log
        assert _alive(pid), f"{kind} died with its shell:\n{log}"
        assert STOPPING[kind] not in log, log
    finally:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("kind", ["worker", "web"])
@pytest.mark.parametrize("how", ["env", "flag"])
def test_a_process_asked_to_die_with_its_parent_stops_gracefully(
        kind: str, how: str, subprocess_env: dict[str, str], db_url: str, tmp_path: Path) -> None:
    env = dict(subprocess_env, DATABASE_URL=db_url, CRASHONLY_SECRET_KEY="k" * 32)
    if how == "env":
        env["CRASHONLY_DIE_WITH_PARENT"] = "1"
    pid = _in_background(kind, ["--die-with-parent"] if how == "flag" else [], env, tmp_path)
    try:
        deadline = time.monotonic() + 15
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        log = (tmp_path / f"{kind}.log").read_text()
        assert not _alive(pid), f"{kind} outlived its parent though asked not to:\n{log}"
        assert STOPPING[kind] in log, log  # a graceful stop, not a kill
    finally:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
