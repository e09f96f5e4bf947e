"""`crashonly up` running the real `crashonly web` and `crashonly worker`."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import crashonly
from tests.conftest import PYTHON, ROOT
from tests.supervisor.harness import Up, tagged, wait_until_gone
from tests.supervisor.test_up import Load, get
from tests.web.harness import KEY

UpFactory = Callable[..., Up]

PROCFILE = (
    f"web: {PYTHON} -m crashonly.cli web tests.web.apps:hello --fd 3\n"
    f"worker: {PYTHON} -m crashonly.cli worker workapp:app\n"
)


def test_web_and_worker_under_up(up: UpFactory, db_url: str,
                                 subprocess_env: dict[str, str]) -> None:
    subprocess_env.update(DATABASE_URL=db_url, CRASHONLY_SECRET_KEY=KEY)
    proc = up(PROCFILE, "--formation", "web=2,worker=1", "--timeout", "10")
    port = proc.port()
    for label in ("web.1", "web.2", "worker.1"):
        proc.wait_for(rf"{label} \(pid \d+\) ready in .* \(READY=1\)", timeout=20)
    assert get(port) != ""

    app = crashonly.App(db_url)
    assert app.enqueue("workapp.noop").wait(timeout=10) is None

    load = Load(port, clients=8)
    try:
        result = proc.ctl("restart")
    finally:
        time.sleep(0.3)
        load.stop()
    assert result.returncode == 0, result.stderr
    assert "restarted web.1 web.2 worker.1" in result.stdout
    # No request refused (up keeps the port bound) and none failed (a draining web process
    # leaves the shared accept queue to its sibling and serves what it accepted).
    assert load.failures == []
    assert load.ok > 20
    assert app.enqueue("workapp.noop").wait(timeout=10) is None  # the new worker takes jobs

    proc.signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    assert tagged(proc.tag) == []


def test_rolling_restarts_reset_no_request(up: UpFactory,
                                          subprocess_env: dict[str, str]) -> None:
    """Issue 10: 10 rolling restarts of web=2 while 12 clients open a new connection per
    request (``GET /`` answered at once): tens of thousands of requests, none reset."""
    subprocess_env.update(CRASHONLY_SECRET_KEY="test-only-not-a-secret-session-key-0123456789")
    proc = up(f"web: {PYTHON} -m crashonly.cli web tests.web.apps:hello --fd 3\n",
              "--formation", "web=2", "--timeout", "10")
    port = proc.port()
    for label in ("web.1", "web.2"):
        proc.wait_for(rf"{label} \(pid \d+\) ready in .* \(READY=1\)", timeout=20)
    load = Load(port, clients=12)
    try:
        for _ in range(10):
            result = proc.ctl("restart")
            assert result.returncode == 0, result.stderr + proc.text()
        time.sleep(0.3)
    finally:
        load.stop()
    assert load.failures == [], load.failures[:5]
    assert load.ok > 10_000, load.ok
    assert proc.count(r"rolling restart done in .*: web\.1 web\.2") == 10


def test_the_example_shop_procfile(tmp_path: Path, db_url: str,
                                   subprocess_env: dict[str, str]) -> None:
    """The README's `crashonly up -f examples/shop/Procfile`: an order placed on the web
    process is priced by a worker, with both started by `up` from the example's Procfile."""
    import httpx

    env = dict(subprocess_env, DATABASE_URL=db_url, CRASHONLY_TEST_TAG=uuid.uuid4().hex,
               PATH=f"{Path(PYTHON).parent}{os.pathsep}{subprocess_env.get('PATH', '')}")
    env.pop("REDIS_URL", None)
    proc = subprocess.Popen(
        [PYTHON, "-m", "crashonly.cli", "up", "-f", "examples/shop/Procfile", "--port", "0",
         "-m", "web=1,worker=1"], cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 30
        while not (sum("ready in" in line for line in list(lines)) >= 2
                   and any("listening on port" in line for line in list(lines))):
            assert time.monotonic() < deadline, "".join(lines)
            assert proc.poll() is None, "".join(lines)
            time.sleep(0.05)
        port = int(next(line for line in list(lines) if "listening on port" in line)
                   .split("listening on port ")[1].split(";")[0])
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=20) as client:
            placed = client.post("/orders", json={"lines": [
                {"sku": "tea", "quantity": 4, "unit_price": "30.00"}]})
            assert placed.status_code == 202, placed.text
            job = client.get(placed.json()["wait"])
            assert job.status_code == 200, job.text
            assert job.json()["state"] == "done"
            assert job.json()["result"]["total"] == "136.80"  # (120 - 5%) + 20% tax
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, "".join(lines)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        for pid in tagged(env["CRASHONLY_TEST_TAG"]):
            os.kill(pid, signal.SIGKILL)
        reader.join(5)
        if proc.stdout is not None:
            proc.stdout.close()
    assert wait_until_gone(env["CRASHONLY_TEST_TAG"], 5) == []


def test_when_up_is_sigkilled_crashonly_web_still_drains(up: UpFactory,
                                                         subprocess_env: dict[str, str]) -> None:
    """The watchdog sends one SIGTERM; `die_with_parent` stays quiet under `up`, so the web
    process gets no second signal (which would mean "stop now") and finishes its request."""
    subprocess_env.update(CRASHONLY_SECRET_KEY=KEY)
    proc = up(f"web: {PYTHON} -m crashonly.cli web tests.web.apps:hello --fd 3\n")
    port = proc.port()
    proc.wait_for(r"web\.1 \(pid \d+\) ready in .* \(READY=1\)", timeout=20)
    answers: list[str] = []
    request = threading.Thread(target=lambda: answers.append(get(port, "/sleep?s=1.5")))
    request.start()
    time.sleep(0.5)
    os.kill(proc.popen.pid, signal.SIGKILL)
    request.join(10)
    assert answers, "the in-flight request was cut"
    assert wait_until_gone(proc.tag, 10) == []
