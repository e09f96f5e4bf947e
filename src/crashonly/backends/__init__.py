"""Queue backends, chosen by URL scheme. Only this package imports database drivers.

A backend registers under one or more URL schemes: the built-in ones below, others with
:func:`register` (in process) or through the ``crashonly.backends`` entry-point group (an
installed package; docs/backends.md). A factory is called as ``factory(url, create=...)`` and
returns a :class:`Backend`. Entry points are read only for a scheme that is not built in or
registered, so opening SQLite or PostgreSQL never scans the installed packages (worker start-up).
"""

from __future__ import annotations

import urllib.parse
from typing import Protocol

from ..errors import ConfigError
from .base import Backend, Capabilities, RecoveryReport, WorkerInfo

__all__ = [
    "ENTRY_POINT_GROUP",
    "Backend",
    "BackendFactory",
    "Capabilities",
    "RecoveryReport",
    "WorkerInfo",
    "open_backend",
    "register",
]

ENTRY_POINT_GROUP = "crashonly.backends"


class BackendFactory(Protocol):
    """What a scheme names: a backend class, or any callable of the same shape."""

    def __call__(self, url: str, *, create: bool = True) -> Backend: ...


def _sqlite(url: str, *, create: bool = True) -> Backend:
    from .sqlite import SQLiteBackend

    return SQLiteBackend(url, create=create)


def _postgres(url: str, *, create: bool = True) -> Backend:
    try:
        from .postgres import PostgresBackend  # type: ignore[import-not-found,unused-ignore]
    except ImportError as exc:
        raise ConfigError(
            f"{url.split('@')[-1]!r} needs the PostgreSQL driver: pip install 'crashonly[postgres]'"
        ) from exc
    backend: Backend = PostgresBackend(url, create=create)
    return backend


# Built-in schemes, then those registered in process or found through entry points (cached).
_REGISTRY: dict[str, BackendFactory] = {
    "sqlite": _sqlite,
    "postgresql": _postgres,
    "postgres": _postgres,
}
_EXAMPLES = "sqlite:///path.db, sqlite:///:memory:, postgresql://user@host/db"


def register(scheme: str, factory: BackendFactory) -> None:
    """Open URLs of ``scheme`` (``scheme://...``, and ``scheme+driver://...``) with
    ``factory``. A later registration of the same scheme replaces the earlier one."""
    scheme = scheme.lower()
    if not scheme or "+" in scheme or scheme != urllib.parse.urlsplit(f"{scheme}://").scheme:
        raise ConfigError(f"cannot register the URL scheme {scheme!r}: not a valid scheme name")
    _REGISTRY[scheme] = factory


def _entry_point(scheme: str) -> tuple[BackendFactory | None, list[str]]:
    """The factory an installed package advertises for ``scheme``, and every advertised name.
    Imported here, not above: ``importlib.metadata`` costs milliseconds that SQLite and
    PostgreSQL users should not pay."""
    from importlib.metadata import entry_points

    found = entry_points(group=ENTRY_POINT_GROUP)
    for ep in found:
        if ep.name.lower() == scheme:
            try:
                factory: BackendFactory = ep.load()
            except Exception as exc:  # a broken plug-in must say which one
                raise ConfigError(
                    f"the {scheme}:// backend ({ep.value}, entry point group "
                    f"{ENTRY_POINT_GROUP}) failed to load: {type(exc).__name__}: {exc}"
                ) from exc
            return factory, []
    return None, sorted(ep.name.lower() for ep in found)


def open_backend(url: str, *, create: bool = True) -> Backend:
    """The backend for ``url``; drivers of other backends are not imported."""
    scheme = urllib.parse.urlsplit(url).scheme.lower() if "://" in url else ""
    base = scheme.split("+", 1)[0]  # postgresql+psycopg:// is postgresql://
    factory = _REGISTRY.get(base)
    if factory is None and base:
        factory, advertised = _entry_point(base)
        if factory is None:
            known = ", ".join(f"{s}://" for s in sorted({*_REGISTRY, *advertised}))
            raise ConfigError(
                f"unknown backend scheme {scheme + '://'!r} in {url.split('@')[-1]!r}; "
                f"known schemes: {known} (a third-party backend registers in the "
                f"{ENTRY_POINT_GROUP!r} entry-point group: docs/backends.md)"
            )
        _REGISTRY[base] = factory
    if factory is None:
        raise ConfigError(f"malformed database URL {url!r}; expected one of: {_EXAMPLES}")
    return factory(url, create=create)
