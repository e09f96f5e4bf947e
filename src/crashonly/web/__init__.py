"""The web process (``crashonly web``) and what a stateless web app needs from it.

* :class:`SessionMiddleware` (ASGI; :mod:`crashonly.web.wsgi` for WSGI): sessions kept in
  Redis, Memcached or the queue's SQL database, the cookie holding only a signed id.
* :func:`job_router`: job status over HTTP, with long-poll and server-sent events.
* :class:`PackageAssets`: static files served from a package, read once at start-up.
* :func:`drain_event`: lets a long response notice that its process is draining.

Needs the ``web`` extra (uvicorn, starlette, a2wsgi).
"""

from __future__ import annotations

from .assets import PackageAssets, crashonly_assets
from .drain import drain_event
from .jobs import job_router, job_view
from .sessions import Session, SessionMiddleware, SessionTooLarge
from .stores import SessionStore, SessionStoreError, open_store

__all__ = [
    "PackageAssets",
    "Session",
    "SessionMiddleware",
    "SessionStore",
    "SessionStoreError",
    "SessionTooLarge",
    "crashonly_assets",
    "drain_event",
    "job_router",
    "job_view",
    "open_store",
]
