"""The web process: throughput against plain uvicorn, session costs, SIGTERM to exit.

    .venv/bin/python bench/web.py [--seconds 5] [--runs 3] [--connections 50]

Needs ``wrk`` (apt-get install wrk), and Redis/Memcached (``bash .ci/services``) for the
session rows. Everything targets 127.0.0.1. Measures:

1. requests/s of a hello-world ASGI app under ``crashonly web`` and under plain ``uvicorn``
   (same app, same h11 parser, access log off, one process each, same wrk run), alternated,
   median of ``--runs``;
2. per-request cost of a session: in-process (``SessionManager.open`` + ``commit``, a read and
   a write per request) on each store; and over HTTP (Starlette with and without the middleware);
3. seconds from SIGTERM to exit: idle, with 50 requests in flight (each 1 s long), and under
   wrk load; plus failed requests when SIGTERM lands under load, for both servers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))


def env(**extra: str) -> dict[str, str]:
    e = dict(os.environ, PYTHONPATH=f"{ROOT}:{ROOT / 'src'}", PYTHONUNBUFFERED="1",
             CRASHONLY_SECRET_KEY="bench-only-not-a-secret-session-key-0123456789")
    e.update(extra)
    return e


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 15) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on {port}")


def start(kind: str, app: str, port: int, **extra: str) -> subprocess.Popen[bytes]:
    if kind == "crashonly":
        args = [PY, "-m", "crashonly.cli", "web", app, "--port", str(port)]
    else:
        args = [PY, "-m", "uvicorn", app, "--port", str(port), "--http", "h11",
                "--no-access-log", "--log-level", "warning", "--lifespan", "off"]
    proc = subprocess.Popen(args, cwd=ROOT, env=env(**extra), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def wrk(url: str, seconds: float, connections: int, headers: list[str] = ()) -> float:  # type: ignore[assignment]
    args = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency"]
    for h in headers:
        args += ["-H", h]
    out = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors or non2xx:
        print(f"    wrk: {errors.group(0) if errors else ''} "
              f"{non2xx.group(0) if non2xx else ''}".rstrip())
    return float(m.group(1)) if m else 0.0


# --- 1 ------------------------------------------------------------------------------------------
def throughput(args: argparse.Namespace) -> dict[str, float]:
    results: dict[str, list[float]] = {"uvicorn": [], "crashonly": []}
    for _ in range(args.runs):
        for kind in ("uvicorn", "crashonly"):
            port = free_port()
            proc = start(kind, "bench.webapps.apps:hello", port)
            try:
                wrk(f"http://127.0.0.1:{port}/", 1, args.connections)  # warm up
                results[kind].append(wrk(f"http://127.0.0.1:{port}/", args.seconds,
                                         args.connections))
            finally:
                stop(proc)
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"  hello world, {args.connections} connections, {args.seconds:g} s, median of "
          f"{args.runs}: uvicorn {med['uvicorn']:.0f} req/s, crashonly web "
          f"{med['crashonly']:.0f} req/s = {100 * med['crashonly'] / med['uvicorn']:.1f}%")
    print(f"    runs: uvicorn {[round(x) for x in results['uvicorn']]}, "
          f"crashonly {[round(x) for x in results['crashonly']]}")
    return med


# --- 2 ------------------------------------------------------------------------------------------
def session_costs(args: argparse.Namespace) -> None:
    from crashonly.web.sessions import SessionManager

    tmp = tempfile.mkdtemp()
    stores = {"redis": "redis://127.0.0.1:6379/0", "memcached": "memcached://127.0.0.1:11211",
              "sqlite": f"sqlite:///{tmp}/sessions.db",
              "postgresql": "postgresql://postgres@127.0.0.1:5432/test"}
    print("  in-process, one read + one write per request (open + commit of a changed session):")
    for name, url in stores.items():
        try:
            manager = SessionManager(store=url, secret_key="bench")
            s = manager.open(None)
            s["user"] = "ana"
            s["cart"] = [{"sku": "A", "quantity": 2}]
            cookie = manager.commit(s, https=False) or ""
            header = cookie.split(";")[0]
            n = 2000
            t0 = time.perf_counter()
            for i in range(n):
                s = manager.open(header)
                s["n"] = i
                manager.commit(s, https=False)
            rw = (time.perf_counter() - t0) / n
            t0 = time.perf_counter()
            for _ in range(n):
                manager.open(header)
            ro = (time.perf_counter() - t0) / n
            manager.store.close()
            print(f"    {name:10s} read+write {rw * 1e6:7.0f} µs   read only {ro * 1e6:7.0f} µs")
        except Exception as exc:  # a service that is not running: say so, go on
            print(f"    {name:10s} skipped: {exc}")
    print("  over HTTP (Starlette, crashonly web, wrk):")
    port = free_port()
    plain = start("crashonly", "bench.webapps.apps:sessions", port, BENCH_STARLETTE="1")
    try:
        base = wrk(f"http://127.0.0.1:{port}/plain", args.seconds, args.connections)
    finally:
        stop(plain)
    print(f"    no session middleware   {base:7.0f} req/s")
    for name in ("redis", "sqlite"):
        port = free_port()
        proc = start("crashonly", "bench.webapps.apps:sessions", port, BENCH_STARLETTE="1",
                     BENCH_SESSION_URL=stores[name])
        try:
            import urllib.request

            with urllib.request.urlopen(f"http://127.0.0.1:{port}/write") as r:
                cookie = r.headers["set-cookie"].split(";")[0]
            for path in ("read", "write"):
                rps = wrk(f"http://127.0.0.1:{port}/{path}", args.seconds, args.connections,
                          [f"Cookie: {cookie}"])
                cost = (1 / rps - 1 / base) * 1e6 if rps else float("nan")
                print(f"    {name:10s} {path:5s}   {rps:7.0f} req/s  (+{cost:.0f} µs of "
                      "server time per request)")
        finally:
            stop(proc)


# --- 3 ------------------------------------------------------------------------------------------
async def _inflight(port: int, n: int, seconds: float) -> list[int | str]:
    async def one() -> int | str:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"GET /sleep?s={seconds} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            await writer.drain()
            line = await reader.readline()
            writer.close()
            return int(line.split()[1]) if line else "closed without answer"
        except OSError as exc:
            return type(exc).__name__

    return await asyncio.gather(*(one() for _ in range(n)))


async def _hammer(port: int, seconds: float, at: float, pid: int, c: int) -> dict[str, int]:
    import httpx

    out = {"ok": 0, "refused": 0, "failed": 0}
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=c, max_keepalive_connections=c)
    async with httpx.AsyncClient(limits=limits, timeout=10) as client:
        async def one() -> None:
            while time.monotonic() < deadline:
                try:
                    r = await client.get(f"http://127.0.0.1:{port}/")
                    out["ok" if r.status_code == 200 else "failed"] += 1
                except httpx.ConnectError:
                    out["refused"] += 1
                    return
                except httpx.HTTPError:
                    out["failed"] += 1

        async def kill() -> None:
            await asyncio.sleep(at)
            os.kill(pid, signal.SIGTERM)

        await asyncio.gather(kill(), *(one() for _ in range(c)))
    return out


def shutdown_times(args: argparse.Namespace) -> None:
    def timed_exit(proc: subprocess.Popen[bytes]) -> float:
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        return time.monotonic() - t0

    idle: list[float] = []
    busy: list[float] = []
    codes: list[Any] = []
    for _ in range(args.runs):
        port = free_port()
        proc = start("crashonly", "bench.webapps.apps:hello", port)
        time.sleep(0.2)
        idle.append(timed_exit(proc))
        port = free_port()
        proc = start("crashonly", "bench.webapps.apps:hello", port)

        async def scenario(proc: subprocess.Popen[bytes] = proc, port: int = port) -> float:
            task = asyncio.ensure_future(_inflight(port, 50, 1.0))
            await asyncio.sleep(0.2)
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            codes.extend(await task)
            while proc.poll() is None:
                await asyncio.sleep(0.005)
            return time.monotonic() - t0

        busy.append(asyncio.run(scenario()))
    ok = sum(1 for c in codes if c == 200)
    print(f"  SIGTERM -> exit, idle: median {statistics.median(idle) * 1000:.0f} ms "
          f"(runs {[round(x * 1000) for x in idle]})")
    print(f"  SIGTERM -> exit, 50 requests of 1 s in flight (signal 0.2 s in): median "
          f"{statistics.median(busy) * 1000:.0f} ms; {ok}/{len(codes)} answered 200")
    for kind in ("crashonly", "uvicorn"):
        totals = {"ok": 0, "refused": 0, "failed": 0}
        exits = []
        for _ in range(args.runs):
            port = free_port()
            proc = start(kind, "bench.webapps.apps:hello", port)
            t0 = time.monotonic()
            out = asyncio.run(_hammer(port, 2.0, 1.0, proc.pid, args.connections))
            proc.wait(30)
            exits.append(time.monotonic() - t0 - 1.0)
            for k in totals:
                totals[k] += out[k]
        print(f"  SIGTERM under load ({args.connections} httpx connections), {kind:9s}: "
              f"{totals['ok']} ok, {totals['failed']} failed, {totals['refused']} refused "
              f"after; exit within {max(exits) * 1000:.0f} ms of the signal (max of {args.runs})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--only", choices=("throughput", "sessions", "shutdown"))
    args = parser.parse_args()
    print(f"bench/web.py on {os.cpu_count()} cores, python {sys.version.split()[0]}")
    if args.only in (None, "throughput"):
        print("1. throughput")
        throughput(args)
    if args.only in (None, "sessions"):
        print("2. sessions")
        session_costs(args)
    if args.only in (None, "shutdown"):
        print("3. shutdown")
        shutdown_times(args)


if __name__ == "__main__":
    secrets.token_bytes(1)
    main()
