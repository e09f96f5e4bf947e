"""Apps for the chaos verifier's tests: a queue app (the probe is added to it by the verifier),
a user task, and a small ASGI app for the web type."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import crashonly

app = crashonly.App(os.environ.get("DATABASE_URL"))


@app.task(max_attempts=20)
def chore(ms: float = 20.0) -> str:
    """A plain (not transactional) task: at-least-once, so it may run again after a SIGKILL."""
    time.sleep(ms / 1000)
    return "done"


async def web(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers every request after a few milliseconds."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await asyncio.sleep(0.005)
    body = b"ok"
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
