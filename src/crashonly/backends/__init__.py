"""Queue backends, chosen by URL scheme. Only this package imports database drivers."""

from __future__ import annotations

import urllib.parse

from ..errors import ConfigError
from .base import Backend, Capabilities, RecoveryReport, WorkerInfo

__all__ = ["Backend", "Capabilities", "RecoveryReport", "WorkerInfo", "open_backend"]

_SCHEMES = "sqlite:///path.db, sqlite:///:memory:, postgresql://user@host/db"


def open_backend(url: str, *, create: bool = True) -> Backend:
    """The backend for ``url``; drivers of other backends are not imported."""
    scheme = urllib.parse.urlsplit(url).scheme if "://" in url else ""
    if scheme == "sqlite":
        from .sqlite import SQLiteBackend

        return SQLiteBackend(url, create=create)
    if scheme in ("postgres", "postgresql") or scheme.startswith("postgresql+"):
        try:
            from .postgres import PostgresBackend  # type: ignore[import-not-found,unused-ignore]
        except ImportError as exc:
            raise ConfigError(
                f"{url.split('@')[-1]!r} needs the PostgreSQL driver: "
                "pip install 'crashonly[postgres]'"
            ) from exc
        backend: Backend = PostgresBackend(url, create=create)
        return backend
    raise ConfigError(f"malformed or unsupported database URL {url!r}; expected one of: {_SCHEMES}")
