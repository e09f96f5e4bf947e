"""The web process (``crashonly web``) and what a stateless web app needs from it."""

from __future__ import annotations

__all__: list[str] = []
