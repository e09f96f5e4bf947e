"""The shop's web process: a cart in the session, orders priced by background jobs.

Run it (with a worker beside it)::

    crashonly web examples.shop.web:app          # http://127.0.0.1:8000
    crashonly worker examples.shop.app:app

* ``POST /cart`` ``{"sku": "A", "quantity": 2, "unit_price": "9.50"}`` adds a line to the cart,
  which lives in the session (Redis if ``$REDIS_URL`` is set, else an SQLite file beside the
  queue's, ``shop.sessions.db``), so any web process can serve the next request.
* ``POST /orders`` enqueues ``price_order`` for the cart (or for ``{"lines": [...]}``) and
  answers 202 with the job's status URLs; the job id goes into the session.
* ``GET /jobs/{id}`` (``/wait``, ``/events``) shows a job, with its result (the order's total),
  only to the session that ordered it.
* ``GET /`` is a page that follows the orders live (``jobs.js`` from the package).
"""

from __future__ import annotations

import html
import os
import uuid
from decimal import Decimal, InvalidOperation
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Mount, Route

from crashonly import Job
from crashonly.web import SessionMiddleware, crashonly_assets, job_router
from crashonly.web.stores import sessions_beside

from .app import app as queue
from .app import price_order

MAX_LINES = 100


class BadOrder(ValueError):
    pass


def _line(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise BadOrder("each line is an object with sku, quantity and unit_price")
    try:
        quantity = int(raw["quantity"])
        price = Decimal(str(raw["unit_price"]))
    except (KeyError, TypeError, ValueError, InvalidOperation):
        raise BadOrder("each line needs an integer quantity and a decimal unit_price") from None
    if not 0 < quantity <= 10_000 or not price.is_finite() or not 0 <= price <= 1_000_000:
        raise BadOrder("quantity must be 1 to 10000 and unit_price 0 to 1000000")
    return {"sku": str(raw.get("sku", ""))[:40], "quantity": quantity, "unit_price": str(price)}


async def _json(request: Request) -> Any:
    try:
        return await request.json()
    except ValueError:
        raise BadOrder("the body must be JSON") from None


async def add_to_cart(request: Request) -> JSONResponse:
    try:
        line = _line(await _json(request))
    except BadOrder as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)
    cart = request.session.setdefault("cart", [])
    if len(cart) >= MAX_LINES:
        return JSONResponse({"error": f"a cart holds at most {MAX_LINES} lines"}, 400)
    cart.append(line)
    return JSONResponse({"cart": cart})


async def place_order(request: Request) -> JSONResponse:
    try:
        body = await _json(request) if await request.body() else {}
        raw_lines = body.get("lines") if isinstance(body, dict) and "lines" in body \
            else request.session.get("cart", [])
        if not isinstance(raw_lines, list) or not 0 < len(raw_lines) <= MAX_LINES:
            raise BadOrder(f"an order has 1 to {MAX_LINES} lines (the cart is empty?)")
        lines = [_line(raw) for raw in raw_lines]
    except BadOrder as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)
    order_id = uuid.uuid4().hex
    handle = await run_in_threadpool(price_order.enqueue, order_id, lines)
    request.session["orders"] = [*request.session.get("orders", []), handle.id][-50:]
    request.session.pop("cart", None)
    return JSONResponse({"order_id": order_id, "job": handle.id,
                         "status": f"/jobs/{handle.id}", "wait": f"/jobs/{handle.id}/wait"},
                        status_code=202)


async def home(request: Request) -> HTMLResponse:
    cart = request.session.get("cart", [])
    orders = request.session.get("orders", [])
    items = "".join(f"<li>{html.escape(line['sku'])} x {line['quantity']} at "
                    f"{html.escape(line['unit_price'])}</li>" for line in cart)
    jobs = "".join(f'<li>order job {int(i)}: <span data-crashonly-job="/jobs/{int(i)}">…</span>'
                   "</li>" for i in orders)
    return HTMLResponse(
        "<!doctype html><meta charset=utf-8><title>shop</title>"
        '<link rel=stylesheet href="/static/crashonly/crashonly.css">'
        f"<h1>Cart</h1><ul>{items or '<li>empty</li>'}</ul>"
        f"<h1>Orders</h1><ul>{jobs or '<li>none yet</li>'}</ul>"
        '<script src="/static/crashonly/jobs.js"></script>')


def _own_job(request: Request, job: Job) -> bool:
    return job.id in request.session.get("orders", [])


app = Starlette(
    routes=[
        Route("/", home),
        Route("/cart", add_to_cart, methods=["POST"]),
        Route("/orders", place_order, methods=["POST"]),
        # only the session that placed an order sees it, and its total (the job's result)
        Mount("/jobs", app=job_router(queue, authorize=_own_job, expose_result=True)),
        Mount("/static/crashonly", app=crashonly_assets()),
    ],
    # sessions in Redis when there is one, else in a file of their own beside the queue's
    middleware=[Middleware(SessionMiddleware,
                           store=os.environ.get("REDIS_URL") or sessions_beside(queue.url))],
)
