"""The example shop's web process end to end, and assets served from the package."""

from __future__ import annotations

import os
from pathlib import Path

import httpx

import crashonly
from crashonly import client
from tests.web.harness import KEY, Web


def test_shop_cart_order_and_live_status(tmp_path: Path, subprocess_env: dict[str, str]) -> None:
    db_url = f"sqlite:///{tmp_path / 'shop.db'}"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = {**subprocess_env, "DATABASE_URL": db_url, "CRASHONLY_SECRET_KEY": KEY,
           "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("REDIS_URL", None)
    web = Web("examples.shop.web:app", env, cwd=cwd).ready()
    try:
        with httpx.Client(base_url=web.url) as http:
            assert http.post("/cart", json={"sku": "A", "quantity": 2,
                                            "unit_price": "60"}).status_code == 200
            assert http.post("/cart", json={"sku": "B", "quantity": "x"}).status_code == 400
            assert http.post("/cart", content=b"{not json").status_code == 400
            assert http.post("/orders", json={"lines": []}).status_code == 400
            placed = http.post("/orders")
            assert placed.status_code == 202
            job_id = placed.json()["job"]
            page = http.get("/").text
            assert f'data-crashonly-job="/jobs/{job_id}"' in page
            assert http.get(f"/jobs/{job_id}").json()["state"] == "ready"
            # another visitor (no session) cannot see this order
            assert httpx.get(f"{web.url}/jobs/{job_id}").status_code == 404

            from examples.shop import app as shop

            worker = crashonly.App(db_url)
            worker.tasks.update(shop.app.tasks)
            worker.drain()
            worker.close()
            cookie = "; ".join(f"{k}={v}" for k, v in http.cookies.items())
            result = client.wait(web.url + "/jobs", job_id, timeout=10,
                                 headers={"Cookie": cookie})
            assert result == {"subtotal": "120.00", "discount": "6.00", "tax": "22.80",
                              "total": "136.80"}

            js = http.get("/static/crashonly/jobs.js")
            assert js.status_code == 200 and "EventSource" in js.text
            assert js.headers["content-type"].startswith(("application/javascript",
                                                          "text/javascript"))
            again = http.get("/static/crashonly/jobs.js",
                             headers={"if-none-match": js.headers["etag"]})
            assert again.status_code == 304 and again.content == b""
            for bad in ["/static/crashonly/../web/cli.py", "/static/crashonly/%2e%2e/cli.py",
                        "/static/crashonly/", "/static/crashonly/nope.js",
                        "/static/crashonly/__init__.py"]:
                assert http.get(bad).status_code == 404, bad
            assert http.post("/static/crashonly/jobs.js").status_code == 405
    finally:
        web.stop()
    assert os.listdir(cwd) == []  # the web process wrote nothing where it ran
