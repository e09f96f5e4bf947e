"""The load: jobs enqueued at a steady pace, HTTP requests to the web type, and queue samples.

Jobs are spread over the run (one batch every 0.2 s) rather than enqueued at once, so the
workers are busy — and killable mid-job — for the whole run, and the charts show a queue that
lives. HTTP requests use one connection each (``Connection: close``): a failure then belongs to
one request, not to a keep-alive connection's idle race, and every request passes through the
shared listening socket that ``up`` holds.
"""

from __future__ import annotations

import http.client
import random
import threading
import time
from typing import Any

from ..errors import CrashonlyError
from .record import Recording, Request, Sample

__all__ = ["HttpLoad", "JobLoad", "Sampler"]

TICK = 0.2


class JobLoad:
    """Enqueue ``total`` jobs of ``task`` on ``queue`` over ``seconds``; the ids are in
    :attr:`ids`."""

    def __init__(self, app: Any, recording: Recording, *, task: str, queue: str, total: int,
                 seconds: float, make_args: Any, seed: int | None = None) -> None:
        self.app = app
        self.recording = recording
        self.task = task
        self.queue = queue
        self.total = total
        self.seconds = max(seconds, TICK)
        self.make_args = make_args  # (rng) -> list of positional args
        self.rng = random.Random(seed)
        self.ids: list[int] = []
        self.errors: list[str] = []
        self.stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-jobs", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def finish(self) -> None:
        """Enqueue whatever is left now and stop."""
        self.stopping.set()
        self._thread.join()
        deadline = time.monotonic() + 30.0
        while len(self.ids) < self.total and time.monotonic() < deadline:
            self._enqueue(self.total - len(self.ids))

    def _run(self) -> None:
        started = time.monotonic()
        while not self.stopping.wait(TICK) and len(self.ids) < self.total:
            share = min(1.0, (time.monotonic() - started) / self.seconds)
            self._enqueue(round(self.total * share) - len(self.ids))

    def _enqueue(self, n: int) -> None:
        if n <= 0:
            return
        calls: list[tuple[str, list[Any], dict[str, Any]]] = [
            (self.task, self.make_args(self.rng), {}) for _ in range(n)]
        try:
            handles = self.app.enqueue_many(calls, queue=self.queue)
        except CrashonlyError as exc:  # e.g. the database is restarting: try again next tick
            self.errors.append(f"{self.recording.now():.1f} s: enqueue: {exc}")
            time.sleep(0.2)
            return
        self.ids.extend(h.id for h in handles)
        self.recording.enqueued = len(self.ids)


class Sampler:
    """Queue counts of ``queue`` four times a second."""

    def __init__(self, app: Any, recording: Recording, *, queue: str) -> None:
        self.app = app
        self.recording = recording
        self.queue = queue
        self.baseline = 0
        self.stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-sampler", daemon=True)

    def start(self) -> None:
        self.baseline = self.app.stats().get(self.queue, {}).get("done", 0)
        self._thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self._thread.join()

    def sample(self) -> Sample | None:
        try:
            counts = self.app.stats().get(self.queue, {})
        except CrashonlyError:
            return None
        s = Sample(t=self.recording.now(),
                   waiting=counts.get("ready", 0) + counts.get("scheduled", 0),
                   reserved=counts.get("reserved", 0), done=counts.get("done", 0) - self.baseline,
                   buried=counts.get("buried", 0))
        self.recording.add_sample(s)
        return s

    def _run(self) -> None:
        while not self.stopping.wait(0.25):
            self.sample()


class HttpLoad:
    """``clients`` threads requesting ``path`` on 127.0.0.1:``port``, ``rate`` requests/s in all."""

    def __init__(self, recording: Recording, *, port: int, path: str, clients: int = 4,
                 rate: float = 40.0, timeout: float = 15.0) -> None:
        self.recording = recording
        self.port = port
        self.path = path
        self.interval = clients / rate
        self.timeout = timeout
        self.stopping = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(i,), name=f"chaos-http-{i}",
                                          daemon=True) for i in range(clients)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self.stopping.set()
        for thread in self._threads:
            thread.join(self.timeout + 1.0)

    def _client(self, index: int) -> None:
        if self.stopping.wait(self.interval * index / len(self._threads)):  # spread the clients
            return
        while not self.stopping.is_set():
            began = time.monotonic()
            self.recording.add_request(self._one())
            # Jittered, so clients that waited together in the backlog do not stay in step.
            pause = self.interval * random.uniform(0.5, 1.5) - (time.monotonic() - began)
            self.stopping.wait(max(0.0, pause))

    def _one(self) -> Request:
        start = self.recording.now()
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        port = None  # ours: a SIGKILL is blamed only if the killed process held this connection
        try:
            conn.connect()
            assert conn.sock is not None
            port = int(conn.sock.getsockname()[1])
            conn.request("GET", self.path, headers={"Connection": "close"})
            response = conn.getresponse()
            response.read()
            return Request(start=start, end=self.recording.now(), status=response.status,
                           port=port)
        except (OSError, http.client.HTTPException) as exc:
            return Request(start=start, end=self.recording.now(), status=None,
                           error=f"{type(exc).__name__}: {exc}"[:200], port=port)
        finally:
            conn.close()
