"""A formation: how many processes of each type (``web=2,worker=3``; ``all=1``).

Foreman's syntax: comma- or space-separated ``type=count`` pairs; ``all=N`` sets every type not
named otherwise. Types absent from a formation given to ``up`` run one process each (foreman's
default); ``scale`` changes only the types it names.
"""

from __future__ import annotations

import re

from . import FormationError

__all__ = ["check_counts", "parse_formation", "resolve_formation"]

_PAIR = re.compile(r"^(?P<name>[A-Za-z0-9_-]+)=(?P<count>\d+)$")
MAX_PER_TYPE = 64  # a typo like web=200 should not fork-bomb a laptop


def parse_formation(text: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in re.split(r"[,\s]+", text.strip()):
        if not item:
            continue
        match = _PAIR.match(item)
        if match is None:
            raise FormationError(f"bad formation item {item!r}: expected TYPE=COUNT, e.g. web=2")
        count = int(match["count"])
        if count > MAX_PER_TYPE:
            raise FormationError(f"{item}: at most {MAX_PER_TYPE} processes per type")
        counts[match["name"]] = count
    if not counts:
        raise FormationError("empty formation: expected TYPE=COUNT, e.g. web=2,worker=3")
    return counts


def check_counts(value: object) -> dict[str, int]:
    """``value`` (decoded JSON from a control client) as a formation, or a FormationError:
    the same limits as the command line, whatever a client sends."""
    if not isinstance(value, dict) or not value:
        raise FormationError("counts must be a non-empty object of TYPE: COUNT")
    counts: dict[str, int] = {}
    for name, count in value.items():
        if not isinstance(name, str) or not _PAIR.match(f"{name}=0"):
            raise FormationError(f"bad process type {name!r}")
        if isinstance(count, bool) or not isinstance(count, int):
            raise FormationError(f"{name}: the count must be an integer, not {count!r}")
        if not 0 <= count <= MAX_PER_TYPE:
            raise FormationError(f"{name}={count}: between 0 and {MAX_PER_TYPE} processes per type")
        counts[name] = count
    return counts


def resolve_formation(
    requested: dict[str, int], names: list[str], *, default: int | None = 1
) -> dict[str, int]:
    """Check ``requested`` against the Procfile's ``names``; fill the others with ``default``
    (``None``: leave them out, as ``scale`` does)."""
    unknown = sorted(set(requested) - set(names) - {"all"})
    if unknown:
        raise FormationError(
            f"unknown process type {', '.join(map(repr, unknown))} in the formation; "
            f"the Procfile has: {', '.join(names)}"
        )
    fill = requested.get("all", default)
    counts: dict[str, int] = {}
    for name in names:
        if name in requested:
            counts[name] = requested[name]
        elif fill is not None:
            counts[name] = fill
    return counts
