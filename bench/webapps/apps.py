"""Apps for bench/web.py: a bare hello world, and Starlette with and without sessions."""

from __future__ import annotations

import asyncio
import os
from typing import Any

BODY = b"Hello, world!"


async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/sleep":
        await asyncio.sleep(float(scope["query_string"].decode().partition("=")[2] or 1))
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"),
                            (b"content-length", str(len(BODY)).encode())]})
    await send({"type": "http.response.body", "body": BODY})


def _sessions() -> Any:
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from crashonly.web import SessionMiddleware

    async def read(request: Request) -> PlainTextResponse:
        return PlainTextResponse(str(request.session.get("n", 0)))

    async def write(request: Request) -> PlainTextResponse:
        request.session["n"] = request.session.get("n", 0) + 1
        return PlainTextResponse(str(request.session["n"]))

    async def plain(request: Request) -> PlainTextResponse:
        return PlainTextResponse("plain")

    routes = [Route("/plain", plain), Route("/read", read), Route("/write", write)]
    url = os.environ.get("BENCH_SESSION_URL")
    middleware = [Middleware(SessionMiddleware, store=url)] if url else []
    return Starlette(routes=routes, middleware=middleware)


sessions = _sessions() if os.environ.get("BENCH_STARLETTE") else None
