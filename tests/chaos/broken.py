"""Deliberately wrong processes, which the chaos verifier must catch.

``python -m tests.chaos.broken ack-first``: a worker that acks a job *before* running it (as
Celery does by default). Killed mid-job, the job is done but its effect never happens: lost work.

``python -m tests.chaos.broken effect-then-ack``: a worker that commits the job's effect and
then acks in a separate transaction, and ignores SIGTERM. Killed between the two (it gets SIGKILL
after ignoring SIGTERM), the job is recovered and runs again: its effect commits twice.

``python -m tests.chaos.broken web``: an HTTP server on the socket ``up`` hands over (fd 3) that
dies at once on SIGTERM, cutting the requests it is answering (each takes 50 ms): no drain.

The workers use the real queue (reserve, settle, recovery) and write the real probe ledger; only
the order of operations is wrong.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

from crashonly.backends import WorkerInfo
from crashonly.chaos import probe
from crashonly.job import Settlement, SettlementKind
from crashonly.lifecycle import notify
from crashonly.loader import load_app


def _record(backend: Any, run: str, job_id: int, attempt: int) -> None:
    with backend.transaction() as conn:
        conn.execute(f"INSERT INTO {probe.LEDGER} (run, job_id, attempt, pid) VALUES (?, ?, ?, ?)",
                     (run, job_id, attempt, os.getpid()))


def worker(mode: str) -> None:
    app = load_app("tests.chaos.apps:app")  # the verifier's environment adds the probe task
    queue = app.tasks[probe.TASK].queue
    backend = app.backend
    me = f"broken-{mode}-{os.getpid()}"
    now = time.time()
    backend.register_worker(WorkerInfo(id=me, host=socket.gethostname(), pid=os.getpid(),
                                       started_at=now, heartbeat_at=now, queues=[queue]))
    if mode == "effect-then-ack":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    notify("READY=1")
    while True:
        app.recover()
        reservations, _ = backend.reserve(worker_id=me, queues=[queue], limit=1, now=time.time())
        if not reservations:
            time.sleep(0.01)
            continue
        r = reservations[0]
        run, ms = json.loads(r.payload)["args"]
        ack = Settlement(job_id=r.job.id, token=r.token, kind=SettlementKind.ACK, result="null")
        if mode == "ack-first":
            backend.settle([ack], now=time.time())
            time.sleep(ms / 1000 + 0.05)
            _record(backend, run, r.job.id, r.job.attempts)
        else:
            _record(backend, run, r.job.id, r.job.attempts)
            time.sleep(ms / 1000 + 0.05)
            backend.settle([ack], now=time.time())


class _Slow(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        time.sleep(0.05)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Inherited(HTTPServer):
    def server_bind(self) -> None:  # the socket is bound already (fd 3, from up)
        self.server_address = self.socket.getsockname()


def web() -> None:
    server = _Inherited(("127.0.0.1", 0), _Slow, bind_and_activate=False)
    server.socket.close()
    server.socket = socket.socket(fileno=3)
    server.server_bind()
    notify("READY=1")
    server.serve_forever()  # SIGTERM: the default action, death, whatever is in flight


if __name__ == "__main__":
    if sys.argv[1] == "web":
        web()
    else:
        worker(sys.argv[1])
