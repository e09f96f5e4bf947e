"""Rolling restarts under load: does `crashonly up` fail or refuse any request?

Runs ``crashonly up`` with ``web=2`` on 127.0.0.1 (a kernel-chosen port), drives it with
``--clients`` concurrent httpx clients (each its own connection), and meanwhile runs
``crashonly restart`` ``--restarts`` times in a row. Every request is counted: succeeded, or
failed by kind (refused, reset, timeout, status other than 200). Bounded: the run ends after the
restarts; each request has a 10 s timeout.

Servers (``--server``):
  crashonly  ``crashonly web bench.rolling_restart:app --fd 3`` (uvicorn, drains on SIGTERM)
  stdlib     the tests' stdlib ``webchild.py`` (isolates `up` from the web server)
Connections (``--keepalive``): off (default) opens a connection per request, which exercises
the shared accept queue; on reuses connections, which also exercises the server's drain of idle
keep-alive connections. ``--stdlib-clients`` uses threads with ``http.client`` instead of httpx
(a new connection per request, as in issue 10; `--busy` adds a busy loop per core).

    .venv/bin/python bench/rolling_restart.py --server crashonly --restarts 20 --clients 64
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The ASGI app served by ``crashonly web`` in this benchmark: answers with its pid."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await asyncio.sleep(0.002)  # a little work, so requests are in flight during restarts
    body = f"{os.getpid()}\n".encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _procfile(server: str) -> str:
    if server == "crashonly":
        return f"web: {sys.executable} -m crashonly.cli web bench.rolling_restart:app --fd 3\n"
    return f"web: {sys.executable} {ROOT / 'tests' / 'supervisor' / 'children' / 'webchild.py'}\n"


class Up:
    def __init__(self, workdir: Path, server: str) -> None:
        (workdir / "Procfile").write_text(_procfile(server))
        self.workdir = workdir
        env = dict(os.environ, PYTHONPATH=str(ROOT), NO_COLOR="1",
                   CRASHONLY_SECRET_KEY="bench-only-not-a-secret-session-key-0123456789")
        self.env = env
        self.lines: list[str] = []
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "crashonly.cli", "up", "--port", "0", "-m", "web=2",
             "--root", str(ROOT)], cwd=workdir, env=env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                match = rx.search(line)
                if match:
                    return match
            time.sleep(0.02)
        raise RuntimeError(f"no {pattern!r} from crashonly up:\n" + "\n".join(self.lines[-30:]))

    def restart(self) -> float:
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "crashonly.cli", "restart"],
                                cwd=self.workdir, env=self.env, text=True, capture_output=True,
                                timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"restart failed: {result.stderr}")
        return time.monotonic() - started

    def stop(self) -> int:
        self.popen.terminate()
        return self.popen.wait(60)


async def _client(port: int, keepalive: bool, stop: asyncio.Event, counts: Counter[str],
                  pids: set[str]) -> None:
    import httpx

    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1 if keepalive else 0)
    headers = {} if keepalive else {"connection": "close"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits,
                                 timeout=10.0, headers=headers) as client:
        while not stop.is_set():
            try:
                response = await client.get("/")
            except httpx.ConnectError as exc:
                counts["refused" if "refused" in str(exc).lower() else "connect error"] += 1
                continue
            except httpx.TimeoutException:
                counts["timeout"] += 1
                continue
            except httpx.HTTPError as exc:
                counts[f"error: {type(exc).__name__}"] += 1
                continue
            if response.status_code == 200:
                counts["ok"] += 1
                pids.add(response.text.strip())
            else:
                counts[f"status {response.status_code}"] += 1


def _stdlib_client(port: int, stop: threading.Event, counts: Counter[str],
                   pids: set[str], lock: threading.Lock) -> None:
    import http.client

    while not stop.is_set():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", "/")
            response = conn.getresponse()
            body = response.read().decode().strip()
            outcome = "ok" if response.status == 200 else f"status {response.status}"
        except (OSError, http.client.HTTPException) as exc:
            outcome, body = f"error: {type(exc).__name__}", ""
        finally:
            conn.close()
        with lock:
            counts[outcome] += 1
            if body:
                pids.add(body)


async def _run(port: int, up: Up, args: argparse.Namespace) -> dict[str, Any]:
    stop = asyncio.Event()
    counts: Counter[str] = Counter()
    pids: set[str] = set()
    halt, lock = threading.Event(), threading.Lock()
    threads = [threading.Thread(target=_stdlib_client, args=(port, halt, counts, pids, lock))
               for _ in range(args.clients if args.stdlib_clients else 0)]
    for thread in threads:
        thread.start()
    clients = [asyncio.create_task(_client(port, args.keepalive, stop, counts, pids))
               for _ in range(0 if args.stdlib_clients else args.clients)]
    await asyncio.sleep(1.0)  # warm up: every connection in use before the first restart
    durations = []
    started = time.monotonic()
    for _ in range(args.restarts):
        durations.append(await asyncio.to_thread(up.restart))
    elapsed = time.monotonic() - started
    await asyncio.sleep(0.5)
    stop.set()
    halt.set()
    await asyncio.gather(*clients)
    for thread in threads:
        thread.join()
    return {"counts": counts, "durations": durations, "elapsed": elapsed, "pids": len(pids)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", choices=("crashonly", "stdlib"), default="crashonly")
    parser.add_argument("--restarts", type=int, default=20)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--keepalive", action="store_true")
    parser.add_argument("--stdlib-clients", action="store_true")
    parser.add_argument("--busy", action="store_true", help="a busy loop per core meanwhile")
    args = parser.parse_args()
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
               for _ in range((os.cpu_count() or 2) if args.busy else 0)]
    try:
        return _main(args)
    finally:
        for burner in burners:
            burner.kill()


def _main(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        up = Up(Path(tmp), args.server)
        try:
            port = int(up.wait_for(r"web listening on port (\d+)")[1])
            up.wait_for(r"web\.2 \(pid \d+\) ready")
            up.wait_for(r"web\.1 \(pid \d+\) ready")
            result = asyncio.run(_run(port, up, args))
        finally:
            code = up.stop()
    counts: Counter[str] = result["counts"]
    failed = sum(v for k, v in counts.items() if k != "ok")
    durations: list[float] = result["durations"]
    print(f"server={args.server} keepalive={'on' if args.keepalive else 'off'} "
          f"clients={args.clients} ({'http.client' if args.stdlib_clients else 'httpx'}) "
          f"restarts={args.restarts} busy={'on' if args.busy else 'off'}")
    print(f"requests: {sum(counts.values())} ok={counts['ok']} failed={failed} "
          f"{dict((k, v) for k, v in counts.items() if k != 'ok')}")
    print(f"rate: {counts['ok'] / result['elapsed']:.0f} req/s over {result['elapsed']:.1f} s; "
          f"distinct web pids that answered: {result['pids']}")
    print(f"restart (web=2, both replaced) duration: median {statistics.median(durations):.2f} s, "
          f"min {min(durations):.2f} s, max {max(durations):.2f} s")
    print(f"up exit code: {code}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
