"""A real browser (headless Chromium) on the example shop: the session lives in the store, not
the process, and the job-status widget's EventSource reconnects by itself when the web process
is replaced mid-wait (D3, P5)."""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import IN_CI
from tests.processes.harness import Proc, worker
from tests.web.harness import Web, listening_socket

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    if not (os.path.exists(CHROMIUM) and os.path.exists(DRIVER)):
        message = "Chromium and chromedriver are not installed (run .ci/services)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                 f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    driver.set_page_load_timeout(20)
    yield driver
    driver.quit()


def post(driver: Any, path: str, body: object) -> Any:
    """fetch() from the page, so the browser's own cookie travels with it."""
    return driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch(arguments[0], {method: 'POST', headers: {'content-type': 'application/json'},"
        " body: JSON.stringify(arguments[1])})"
        ".then(r => r.json().then(j => done({status: r.status, body: j})))"
        ".catch(e => done({status: 0, body: String(e)}));", path, body)


def wait_for_state(driver: Any, state: str, timeout: float = 20.0) -> str:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    element = driver.find_element(By.CSS_SELECTOR, "[data-crashonly-job]")
    WebDriverWait(driver, timeout, poll_frequency=0.05).until(
        lambda d: element.get_attribute("data-state") == state)
    return str(element.text)


def test_order_status_follows_through_a_web_restart(
    browser: Any, db_url: str, subprocess_env: dict[str, str], tmp_path: Path,
) -> None:
    # No key and no session service: on loopback the two web processes share a key kept in
    # the session store, an SQLite file beside the queue's.
    env = dict(subprocess_env, DATABASE_URL=db_url)
    for name in ("CRASHONLY_SECRET_KEY", "SESSION_URL", "REDIS_URL", "MEMCACHED_URL"):
        env.pop(name, None)
    sock = listening_socket()  # held here, as `crashonly up` holds it: the port never closes
    port = sock.getsockname()[1]
    webs: list[Web] = []
    workers: list[Proc] = []
    try:
        webs.append(Web("examples.shop.web:app", env, sock=sock).ready())
        base = f"http://127.0.0.1:{port}"
        browser.get(base + "/")
        assert "empty" in browser.page_source

        assert post(browser, "/cart", {"sku": "tea", "quantity": 6, "unit_price": "19.99"})["status"] == 200
        order = post(browser, "/orders", {})
        assert order["status"] == 202, order
        browser.get(base + "/")  # the order list comes from the session; no worker yet
        assert wait_for_state(browser, "ready") == "ready…"

        # Replace the web process while the page follows the job over SSE.
        webs.append(Web("examples.shop.web:app", env, sock=sock).ready())
        webs[0].signal(signal.SIGTERM)
        assert webs[0].wait() == 0

        workers.append(worker(db_url, env, app="examples.shop.app:app"))
        text = wait_for_state(browser, "done")
        assert "136.73" in text, text  # 6 x 19.99 - 5% + 20% tax, computed by the worker
        browser.save_screenshot(str(tmp_path / "shop.png"))
        assert (tmp_path / "shop.png").stat().st_size > 1000

        # The session outlived the process that created it: the new one still knows the order.
        browser.get(base + "/")
        assert "136.73" in wait_for_state(browser, "done")
        assert f"/jobs/{order['body']['job']}" in browser.page_source
    finally:
        for p in webs:
            p.stop()
        for w in workers:
            w.stop()
        sock.close()
