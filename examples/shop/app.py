"""The example app: a small shop whose orders are priced by background jobs.

``price_order`` does real work — it computes an order's total from the lines it is given
(quantity times unit price, volume discount, tax) — and writes the result transactionally: the
``order_totals`` row and the job's ack commit together, so a killed worker never leaves a
half-written or double-written total, however often the job runs.

Run it: ``./dev demo`` (or ``crashonly worker examples.shop.app:app``).
"""

from __future__ import annotations

import os
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import crashonly

app = crashonly.App(os.environ.get("DATABASE_URL", "sqlite:///shop.db"))

SCHEMA = """
CREATE TABLE IF NOT EXISTS order_totals (
    order_id  TEXT PRIMARY KEY,
    subtotal  TEXT NOT NULL,
    discount  TEXT NOT NULL,
    tax       TEXT NOT NULL,
    total     TEXT NOT NULL,
    job_id    INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS pricing_log (
    order_id  TEXT NOT NULL,
    job_id    INTEGER NOT NULL,
    attempt   INTEGER NOT NULL
)
"""

TAX_RATE = Decimal("0.20")
CENT = Decimal("0.01")


def quote(lines: list[dict[str, Any]]) -> dict[str, str]:
    """Price order lines: 5% off subtotals of 100 or more, then 20% tax. Pure function."""
    subtotal = sum(
        (Decimal(str(line["unit_price"])) * int(line["quantity"]) for line in lines), Decimal(0)
    )
    discount = (subtotal * Decimal("0.05")).quantize(CENT, ROUND_HALF_UP) if subtotal >= 100 else Decimal(0)
    tax = ((subtotal - discount) * TAX_RATE).quantize(CENT, ROUND_HALF_UP)
    total = subtotal - discount + tax
    return {k: str(v.quantize(CENT)) for k, v in
            {"subtotal": subtotal, "discount": discount, "tax": tax, "total": total}.items()}


@app.task(transactional=True, max_attempts=5)
def price_order(order_id: str, lines: list[dict[str, Any]]) -> dict[str, str]:
    """Compute an order's total and store it in the same transaction as the job's ack."""
    job = crashonly.current_job()
    prices = quote(lines)
    db = job.db
    for statement in SCHEMA.split(";"):
        db.execute(statement)
    db.execute(
        "INSERT INTO order_totals (order_id, subtotal, discount, tax, total, job_id) "
        "VALUES (?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (order_id) DO UPDATE SET subtotal = excluded.subtotal, "
        "discount = excluded.discount, tax = excluded.tax, total = excluded.total, "
        "job_id = excluded.job_id",
        (order_id, prices["subtotal"], prices["discount"], prices["tax"], prices["total"], job.id),
    )
    # Append-only: one row per committed run, so "exactly once" can be counted, not assumed.
    db.execute("INSERT INTO pricing_log (order_id, job_id, attempt) VALUES (?, ?, ?)",
               (order_id, job.id, job.attempt))
    return prices


@app.task
def send_receipt(order_id: str) -> str:
    """An effect outside the database: made idempotent with the job's stable key."""
    return f"receipt for {order_id} (idempotency key {crashonly.current_job().idempotency_key})"
