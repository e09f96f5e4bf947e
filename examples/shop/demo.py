"""A two-minute tour: price 300 orders with two workers while one is SIGKILLed and the other
SIGTERMed mid-run, then prove every order was priced exactly once.

    ./dev demo                 (bootstraps .venv, then runs this)
    python -m examples.shop.demo [--orders N] [--keep]

Everything lives in one SQLite file in a temporary folder (the embedded default backend);
no other service is needed.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def start_worker(env: dict[str, str], n: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "crashonly.cli", "worker", "examples.shop.app:app", "--grace", "2"],
        cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=300)
    parser.add_argument("--keep", action="store_true", help="keep the database file afterwards")
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="crashonly-demo-")
    db = os.path.join(folder, "shop.db")
    env = dict(os.environ, DATABASE_URL=f"sqlite:///{db}", PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    os.environ["DATABASE_URL"] = env["DATABASE_URL"]
    from examples.shop.app import app, price_order, quote

    rng = random.Random(1)
    orders = {
        f"order-{i:04d}": [{"unit_price": f"{rng.randint(100, 9999) / 100:.2f}",
                            "quantity": rng.randint(1, 9)} for _ in range(rng.randint(1, 5))]
        for i in range(args.orders)
    }
    handles = price_order.enqueue_many([(oid, lines) for oid, lines in orders.items()])
    print(f"enqueued {len(handles)} price_order jobs into {db}")
    workers = [start_worker(env, i) for i in range(2)]
    events = []
    t0 = time.monotonic()
    killed = termed = False
    while True:
        done = app.stats().get("default", {}).get("done", 0)
        elapsed = time.monotonic() - t0
        if sys.stdout.isatty():
            print(f"\r  {done:4d}/{len(handles)} priced  ({elapsed:4.1f} s)", end="", flush=True)
        if done >= len(handles):
            break
        if not killed and done >= len(handles) // 4:
            workers[0].send_signal(signal.SIGKILL)
            workers[0].wait()
            events.append(f"SIGKILL worker pid {workers[0].pid} at {done} done")
            workers[0] = start_worker(env, 2)
            killed = True
        elif killed and not termed and done >= len(handles) // 2:
            workers[1].send_signal(signal.SIGTERM)
            code = workers[1].wait()
            events.append(f"SIGTERM worker pid {workers[1].pid} at {done} done (exit {code})")
            workers[1] = start_worker(env, 3)
            termed = True
        if elapsed > 120:
            print("\ngave up after 120 s", file=sys.stderr)
            break
        time.sleep(0.05)
    print(f"  {done}/{len(handles)} priced in {time.monotonic() - t0:.1f} s")
    for w in workers:
        w.send_signal(signal.SIGTERM)
    for w in workers:
        w.wait(15)
    for event in events:
        print(f"  {event}")
    conn = sqlite3.connect(db)
    rows = dict(conn.execute("SELECT order_id, total FROM order_totals").fetchall())
    runs = dict(conn.execute("SELECT order_id, count(*) FROM pricing_log GROUP BY order_id").fetchall())
    conn.close()
    wrong = [oid for oid, lines in orders.items() if rows.get(oid) != quote(lines)["total"]]
    stats = app.stats()["default"]
    print(f"\njobs: {stats}")
    twice = sorted(oid for oid, n in runs.items() if n != 1)
    print(f"order totals stored: {len(rows)} of {len(orders)}; wrong or missing: {len(wrong)}; "
          f"committed more than once: {len(twice)}")
    ok = not wrong and not twice and stats["done"] == len(orders) and stats["buried"] == 0
    print("every order priced exactly once, nothing lost" if ok else "SOMETHING WAS LOST")
    app.close()
    if not args.keep:
        for suffix in ("", "-wal", "-shm"):
            Path(db + suffix).unlink(missing_ok=True)
        os.rmdir(folder)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
