"""Sessions shared by default (P5): ``crashonly up -m web=2`` with no CRASHONLY_SECRET_KEY, on
loopback, signs every cookie with one key kept in the session store, so a session set by one
web process is valid in the other, and after a rolling restart."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.conftest import PYTHON
from tests.supervisor.harness import Up

PROCFILE = f"web: {PYTHON} -m crashonly.cli web tests.web.session_apps:session_app --fd 3\n"


def alternate(port: int, client: httpx.Client, pids: set[int]) -> set[int]:
    """GET /me on fresh connections until both web processes answered (each answer must know
    the user); the pids that answered."""
    seen: set[int] = set()
    for _ in range(200):
        me = client.get(f"http://127.0.0.1:{port}/me", headers={"connection": "close"}).json()
        assert me["user"] == "ana", f"process {me['pid']} did not know the session"
        seen.add(me["pid"])
        if seen == pids:
            break
    return seen


def web_pids(up: Up, start: int = 0) -> set[int]:
    return {int(up.wait_for(rf"web\.{i} \(pid (\d+)\) ready in", timeout=30, start=start)[1])
            for i in (1, 2)}


def test_sessions_survive_alternating_processes_and_a_rolling_restart(
        tmp_path: Path, subprocess_env: dict[str, str]) -> None:
    env = dict(subprocess_env, DATABASE_URL=f"sqlite:///{tmp_path / 'queue.db'}")
    for name in ("CRASHONLY_SECRET_KEY", "SESSION_URL", "REDIS_URL", "MEMCACHED_URL"):
        env.pop(name, None)
    workdir = tmp_path / "app"
    workdir.mkdir()
    up = Up(workdir, PROCFILE, ["-m", "web=2", "--timeout", "10"], env)
    try:
        port = up.port()
        pids = web_pids(up)
        with httpx.Client() as client:
            login = client.post(f"http://127.0.0.1:{port}/login", json={"user": "ana"},
                                headers={"connection": "close"})
            assert login.status_code == 200
            assert alternate(port, client, pids) == pids

            mark = len(up.lines)
            result = up.ctl("restart")
            assert result.returncode == 0, result.stderr
            new = web_pids(up, start=mark)
            assert not new & pids
            assert alternate(port, client, new) == new
        # the key lives in the session store (a private file beside the queue's), not in
        # the environment or a file of its own
        sessions = tmp_path / "queue.sessions.db"
        assert sessions.stat().st_mode & 0o777 == 0o600
        assert not any(p.name not in ("Procfile",) for p in workdir.iterdir())
    finally:
        up.close()
