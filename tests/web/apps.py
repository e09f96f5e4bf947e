"""Small ASGI and WSGI apps served by ``crashonly web`` in the tests."""

from __future__ import annotations

import asyncio
import random
from typing import Any

Scope = dict[str, Any]


async def _text(send: Any, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def hello(scope: Scope, receive: Any, send: Any) -> None:
    """``/`` says hello; ``/sleep?s=0.5`` answers after that long; ``/work`` after 0-20 ms."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    path = scope["path"]
    if scope["method"] == "POST":
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await _text(send, 200, b"got " + str(len(body)).encode())
        return
    if path == "/sleep":
        seconds = float(scope["query_string"].decode().partition("=")[2] or 0.5)
        await asyncio.sleep(seconds)
        await _text(send, 200, b"slept")
    elif path == "/work":
        await asyncio.sleep(random.random() * 0.02)
        await _text(send, 200, b"worked")
    elif path == "/boom":
        raise RuntimeError("a bug in the app")
    else:
        await _text(send, 200, b"hello")


def wsgi_hello(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    body = f"hello from wsgi {environ['PATH_INFO']}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]

