"""SQLite death detection where a pid means nothing: another PID namespace (a container on the
same host sharing the database file) and a ``/proc`` mounted ``hidepid=2`` (another user's
worker). Live workers are never declared dead; a killed one still is, by its lock file.

Needs root (``unshare``, ``mount``, ``runuser``), as the issue's scenarios do.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import crashonly
from crashonly.job import JobState
from crashonly.liveness import this_process
from tests.conftest import ROOT
from tests.processes.harness import Proc, worker

PID_NS = ("unshare", "--pid", "--fork", "--mount-proc", "--kill-child")
# A private /proc with hidepid=2 in a mount namespace of its own, then drop to nobody.
HIDEPID = ("unshare", "--mount", "--propagation", "private", "sh", "-c",
           'mount -t proc -o hidepid=2 proc /proc && exec runuser -u nobody -- "$0" "$@"')
SYSTEM_PYTHON = "/usr/bin/python3.11"  # readable by nobody (the venv's lives under /root)

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare")


@pytest.fixture
def shared(subprocess_env: dict[str, str]) -> Iterator[tuple[Path, str, dict[str, str]]]:
    """A folder and database every user may write (as two containers' shared volume)."""
    folder = Path(tempfile.mkdtemp(prefix="crashonly-ns-", dir="/tmp"))
    folder.chmod(0o777)
    url = f"sqlite:///{folder / 'queue.db'}"
    app = crashonly.App(url)
    app.migrate()
    app.close()
    for name in ("queue.db", "queue.db-wal", "queue.db-shm"):
        if (folder / name).exists():
            (folder / name).chmod(0o666)
    env = dict(subprocess_env, PYTHONPATH=os.pathsep.join(
        [str(ROOT / "src"), subprocess_env["PYTHONPATH"]]))
    yield folder, url, env
    shutil.rmtree(folder, ignore_errors=True)


def _starts(marker: Path) -> list[str]:
    return marker.read_text().splitlines() if marker.exists() else []


def _no_false_death(url: str, marker: Path, other: Proc, start_judge: Callable[[], Proc]) -> None:
    """``other`` (running a 4 s job) must not be declared dead by a worker (``start_judge``)
    that cannot judge its pid."""
    app = crashonly.App(url)
    try:
        handle = app.enqueue("workapp.sleeper", [4, str(marker)])
        other.wait_for(r"started .*workapp.sleeper")
        judge = start_judge()
        try:
            judge.wait_for(r"\bready\b")
            other.wait_for(r"succeeded .*workapp.sleeper", timeout=15)
            assert len(_starts(marker)) == 1, judge.text()
            assert not [line for line in judge.lines if "recovered" in line], judge.text()
            job = app.get_job(handle.id)
            assert job.state is JobState.DONE and job.attempts == 1 and job.deaths == 0
        finally:
            judge.stop()
    finally:
        app.close()


def test_a_worker_in_another_pid_namespace_is_not_declared_dead(
    shared: tuple[Path, str, dict[str, str]],
) -> None:
    folder, url, env = shared
    contained = Proc(["worker", "workapp:app"], dict(env, DATABASE_URL=url), wrap=PID_NS)
    try:
        contained.wait_for(r"\bready\b.*pid=1\b")  # pid 1 of its namespace: not ours
        _no_false_death(url, folder / "starts", contained, lambda: worker(url, env))
    finally:
        contained.stop()


def test_a_killed_worker_in_another_pid_namespace_is_detected_by_its_lock(
    shared: tuple[Path, str, dict[str, str]],
) -> None:
    folder, url, env = shared
    marker = folder / "starts"
    contained = Proc(["worker", "workapp:app"], dict(env, DATABASE_URL=url), wrap=PID_NS)
    judge: Proc | None = None
    app = crashonly.App(url)
    try:
        contained.wait_for(r"\bready\b")
        app.enqueue("workapp.sleeper", [30, str(marker)])  # lease 30 s: not what finds it
        contained.wait_for(r"started .*workapp.sleeper")
        judge = worker(url, env)
        judge.wait_for(r"\bready\b")
        killed = time.monotonic()
        contained.stop()  # SIGKILL to its process group: the worker, pid 1 of its namespace
        judge.wait_for(r"recovered .*dead_workers=", timeout=10)
        judge.wait_for(r"started .*workapp.sleeper", timeout=10)
        took = time.monotonic() - killed
        assert took < 3.0, f"found dead after {took:.2f} s"
        assert len(_starts(marker)) == 2
    finally:
        contained.stop()
        if judge is not None:
            judge.stop()
        app.close()


def test_a_worker_hidden_by_hidepid_is_not_declared_dead(
    shared: tuple[Path, str, dict[str, str]],
) -> None:
    """The judge runs as nobody under a /proc mounted hidepid=2: the root worker's pid is
    invisible to it, which is not death."""
    folder, url, env = shared
    root_worker = worker(url, env)
    try:
        root_worker.wait_for(r"\bready\b")
        _no_false_death(url, folder / "starts", root_worker, lambda: Proc(
            ["worker", "workapp:app"], dict(env, DATABASE_URL=url), wrap=HIDEPID,
            python=SYSTEM_PYTHON))
    finally:
        root_worker.stop()


def test_pid_checks_under_hidepid(subprocess_env: dict[str, str]) -> None:
    """Without a lock file to ask, the pid check itself: a process /proc hides is alive unless
    ``kill(pid, 0)`` says ESRCH."""
    me = this_process()
    gone = subprocess.Popen(["true"])
    gone.wait()
    probe = (
        "from crashonly.liveness import ProcessIdentity as P, is_alive\n"
        f"ns = {{'pid_ns': {getattr(me, 'pid_ns', '')!r}}} if 'pid_ns' in P.__dataclass_fields__ else {{}}\n"
        f"alive = is_alive(P(host={me.host!r}, boot_id={me.boot_id!r}, pid={me.pid}, "
        f"start={me.start!r}, **ns))\n"
        f"dead = is_alive(P(host={me.host!r}, boot_id={me.boot_id!r}, pid={gone.pid}, "
        f"start='1', **ns))\n"
        "hidden = not __import__('os').path.exists('/proc/%d' % " + str(me.pid) + ")\n"
        "print(hidden, alive, dead)\n"
    )
    env = dict(subprocess_env, PYTHONPATH=str(ROOT / "src"))
    out = subprocess.run([*HIDEPID, SYSTEM_PYTHON, "-c", probe], env=env, capture_output=True,
                         text=True, timeout=30, check=False)
    assert out.stdout.split() == ["True", "True", "False"], out.stdout + out.stderr
