"""The hot queries must walk an index, never sort or scan the whole backlog: a claim over a
million ready jobs costs what a claim over a hundred does."""

from __future__ import annotations

import sqlite3

import pytest

from crashonly.backends.sqlite import SCHEMA_VERSION, Q

PARAMS = {"now": 1.0, "queue": "default", "limit": 100, "worker": "w", "token": 1,
          "ids": "[1, 2]", "before": 0.0, "id": 1, "mono": 1.0, "dead": "[]"}


@pytest.fixture
def conn() -> sqlite3.Connection:
    c = sqlite3.connect(":memory:")
    for version in range(1, SCHEMA_VERSION + 1):
        c.executescript(Q[f"migration_{version}"])
    return c


def plan(conn: sqlite3.Connection, query: str) -> str:
    return "\n".join(str(row[3]) for row in conn.execute("EXPLAIN QUERY PLAN " + query, PARAMS))


@pytest.mark.parametrize("name", ["claim_candidates", "claim_next", "suspects_waiting",
                                  "orphans_exist", "orphans", "due_scheduled_exist", "promote",
                                  "purge"])
def test_no_sort_and_no_full_scan(conn: sqlite3.Connection, name: str) -> None:
    text = plan(conn, Q[name])
    assert "SCAN crashonly_jobs\n" not in text + "\n", text
    if name != "orphans":  # orphans sorts the few reserved jobs it found, which is fine
        assert "TEMP B-TREE" not in text, text
