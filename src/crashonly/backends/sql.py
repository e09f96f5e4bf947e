"""SQL kept as data: each dialect has one ``*.sql`` file of named queries.

A query starts with a line ``-- name: NAME`` and runs to the next such line. Migrations are
named ``migration_N`` (N = the schema version they produce) and may hold several statements.
"""

from __future__ import annotations

import os

__all__ = ["load_queries"]


def load_queries(filename: str) -> dict[str, str]:
    # A plain open beside this module: importlib.resources costs ~6 ms of worker start-up.
    with open(os.path.join(os.path.dirname(__file__), filename), encoding="utf-8") as f:
        text = f.read()
    queries: dict[str, str] = {}
    name: str | None = None
    lines: list[str] = []
    for line in text.splitlines():
        if line.startswith("-- name:"):
            if name is not None:
                queries[name] = "\n".join(lines).strip()
            name, lines = line.removeprefix("-- name:").strip(), []
        elif name is not None:
            lines.append(line)
    if name is not None:
        queries[name] = "\n".join(lines).strip()
    return queries
