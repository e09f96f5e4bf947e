"""Small ASGI and WSGI apps served by ``crashonly web`` in the tests."""

from __future__ import annotations

import asyncio
import os
import random
import time
from pathlib import Path
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
    if scope["method"] == "POST" and path != "/sleep":
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



async def blocking(scope: Scope, receive: Any, send: Any) -> None:
    """``/block`` calls ``time.sleep(20)`` inside the async handler (a bug that blocks the
    event loop); anything else says hello."""
    if scope["type"] == "http" and scope["path"] == "/block":
        time.sleep(20)
    await hello(scope, receive, send)


def wsgi_orders(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """``POST /order?after=S&id=N``: after S seconds, writes ``$ORDERS_DIR/N`` (the side effect)
    and answers 201; ``/sleep``: sleeps 30 s."""
    query = dict(pair.partition("=")[::2] for pair in environ["QUERY_STRING"].split("&") if pair)
    if environ["PATH_INFO"] == "/sleep":
        time.sleep(30)
    elif environ["PATH_INFO"] == "/order":
        time.sleep(float(query.get("after", "0")))
        (Path(os.environ["ORDERS_DIR"]) / query["id"]).write_text("placed")
        start_response("201 Created", [("Content-Type", "text/plain")])
        return [b"placed"]
    return wsgi_hello(environ, start_response)
