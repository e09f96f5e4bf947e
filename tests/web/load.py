"""A real HTTP client (httpx) under load, sorting every request into ok, refused or failed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx


@dataclass
class Outcome:
    ok: int = 0
    refused: int = 0  # connection refused before anything was sent: allowed after SIGTERM
    closing: int = 0  # ok responses that said "Connection: close" (served while draining)
    failed: list[str] = field(default_factory=list)


async def hammer(url: str, *, concurrency: int, seconds: float,
                 at: float | None = None, action: Callable[[], None] | None = None,
                 stop_on_refusal: bool = True) -> Outcome:
    """``concurrency`` keep-alive clients loop on ``url`` for ``seconds``; ``action`` runs
    ``at`` seconds in. Refused connects end a client when ``stop_on_refusal``."""
    out = Outcome()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(limits=limits, timeout=10.0) as client:

        async def one() -> None:
            while time.monotonic() < deadline:
                try:
                    response = await client.get(url)
                except httpx.ConnectError:
                    out.refused += 1
                    if stop_on_refusal:
                        return
                    await asyncio.sleep(0.01)
                    continue
                except httpx.HTTPError as exc:
                    out.failed.append(f"{type(exc).__name__}: {exc}")
                    continue
                if response.status_code != 200:
                    out.failed.append(f"HTTP {response.status_code}: {response.text[:80]}")
                else:
                    out.ok += 1
                    if response.headers.get("connection", "").lower() == "close":
                        out.closing += 1

        async def trigger() -> None:
            if at is not None and action is not None:
                await asyncio.sleep(at)
                action()

        await asyncio.gather(trigger(), *(one() for _ in range(concurrency)))
    return out
