"""Static files served from a Python package, read once at start-up (P4).

Assets are built before deploy and shipped inside the package (a wheel, an image); the web
process reads them into memory when :class:`PackageAssets` is created and never touches the
file system again, nor writes to it. A request path is looked up in that in-memory index, so
no user input ever reaches a file-system call (no traversal to guard against).

Each file gets a strong ``ETag`` (a hash of its bytes): ``If-None-Match`` answers 304.
``Cache-Control`` is ``public, max-age=…`` (an hour by default; ``immutable`` is for names that
carry a content hash).
"""

from __future__ import annotations

import hashlib
import mimetypes
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

__all__ = ["Asset", "PackageAssets", "crashonly_assets"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


@dataclass(frozen=True, kw_only=True, slots=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


def _walk(folder: Traversable, prefix: str) -> dict[str, Traversable]:
    found: dict[str, Traversable] = {}
    for entry in folder.iterdir():
        if entry.name.startswith((".", "__")):
            continue
        if entry.is_dir():
            found.update(_walk(entry, f"{prefix}{entry.name}/"))
        else:
            found[prefix + entry.name] = entry
    return found


class PackageAssets:
    """An ASGI app serving the files under ``folder`` of ``package`` (mount it anywhere)."""

    def __init__(self, package: str, folder: str = "static", *, max_age: int = 3600) -> None:
        root = resources.files(package).joinpath(folder)
        self.assets: dict[str, Asset] = {}
        for name, entry in _walk(root, "").items():
            body = entry.read_bytes()
            kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
            if kind.startswith("text/") or kind in ("application/javascript", "image/svg+xml"):
                kind += "; charset=utf-8"
            etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
            self.assets[name] = Asset(body=body, content_type=kind, etag=etag)
        self.cache_control = f"public, max-age={max_age}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        method = scope["method"]
        path = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):  # mounted under a prefix
            path = path[len(root):]
        asset = self.assets.get(path.lstrip("/"))
        if method not in ("GET", "HEAD"):
            status, body, headers = 405, b"method not allowed\n", [(b"allow", b"GET, HEAD")]
        elif asset is None:
            status, body, headers = 404, b"not found\n", []
        else:
            headers = [(b"etag", asset.etag.encode()), (b"cache-control", self.cache_control)]
            match = dict(scope["headers"]).get(b"if-none-match", b"")
            if asset.etag.encode() in [m.strip() for m in match.split(b",")]:
                await send({"type": "http.response.start", "status": 304, "headers": headers})
                await send({"type": "http.response.body", "body": b""})
                return
            status, body = 200, asset.body
            headers.append((b"content-type", asset.content_type.encode()))
        if status != 200:
            headers.append((b"content-type", b"text/plain; charset=utf-8"))
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})


def crashonly_assets() -> PackageAssets:
    """crashonly's own assets: ``jobs.js`` (a job-status widget on ``EventSource``)."""
    return PackageAssets("crashonly.web", "static")
