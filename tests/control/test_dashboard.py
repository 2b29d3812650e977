"""The dashboard in a real headless Chromium (Debian's, driven by selenium through Debian's
chromedriver): it shows a rollout, its buttons act on it with same-origin JSON POSTs carrying
the token, and the guard's abort shows with its numbers.

The browser talks to the service's own admin API (token from SPLITPROXY_ADMIN_TOKEN) through
a recorder that forwards each request as sent, Host and Origin included, and keeps what the
buttons POSTed. Selenium blocks, so every browser call runs in a thread: the event loop keeps
serving the proxy and the admin API meanwhile.
Set SPLITPROXY_DASHBOARD_SCREENSHOT=docs/dashboard.png to refresh the README's picture.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from splitproxy.control.service import Service
from tests.support.configs import rollout_config
from tests.support.load import Load, plain
from tests.support.service import run_service, write_config
from tests.support.upstream import run_upstreams
from tests.support.waiting import WAIT, wait_until

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
REQUIRED = os.environ.get("SPLITPROXY_REQUIRE_SERVICES") == "1"
SCREENSHOT = os.environ.get("SPLITPROXY_DASHBOARD_SCREENSHOT")
TOKEN = "dashboard-test-token-0123456789"


def _missing() -> str | None:
    if importlib.util.find_spec("selenium") is None:
        return "selenium is not installed (the test extra)"
    for path in (CHROMIUM, CHROMEDRIVER):
        if shutil.which(path) is None:
            return f"{path} is missing (apt-get install chromium chromium-driver)"
    return None


@pytest.fixture
def driver() -> Iterator[Any]:
    missing = _missing()
    if missing is not None:
        if REQUIRED:
            pytest.fail(f"SPLITPROXY_REQUIRE_SERVICES=1 but {missing}", pytrace=False)
        pytest.skip(missing)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    os.environ.setdefault("SE_OFFLINE", "true")  # never let selenium fetch a browser
    with tempfile.TemporaryDirectory(prefix="splitproxy-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for arg in ("--headless", "--no-sandbox", "--disable-gpu",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
                    "--window-size=1280,900"):
            options.add_argument(arg)
        browser = webdriver.Chrome(options=options, service=DriverService(CHROMEDRIVER))
        try:
            yield browser
        finally:
            browser.quit()


class Page:
    """The browser, one blocking call at a time in a thread."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver

    async def call(self, fn: Callable[[], Any]) -> Any:
        return await asyncio.to_thread(fn)

    async def open(self, url: str) -> None:
        await self.call(lambda: self.driver.get(url))

    async def text(self, css: str) -> str:
        from selenium.common.exceptions import (
            NoSuchElementException,
            StaleElementReferenceException,
        )

        def read() -> str:
            try:
                return str(self.driver.find_element("css selector", css).text)
            except (NoSuchElementException, StaleElementReferenceException):
                return ""

        return str(await self.call(read))

    async def wait_text(self, css: str, wanted: str | Callable[[str], bool],
                        what: str, timeout: float = WAIT) -> str:
        check = wanted if callable(wanted) else (lambda text: wanted in text)
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = await self.text(css)
            if check(text):
                return text
            await asyncio.sleep(0.1)
        raise AssertionError(f"{what}: {css} says {text!r}")

    async def click(self, css: str) -> None:
        await self.call(lambda: self.driver.find_element("css selector", css).click())

    async def type(self, css: str, text: str) -> None:
        await self.call(lambda: self.driver.find_element("css selector", css).send_keys(text))

    async def screenshot(self, path: str) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        body = await self.call(lambda: self.driver.find_element("css selector", "body"))
        assert await self.call(lambda: body.screenshot(path))  # the page, not the window


HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length",
                        "content-encoding"})


@contextlib.asynccontextmanager
async def recorded_admin(svc: Service, posts: list[dict[str, str]]) -> AsyncIterator[str]:
    """A recorder in front of `svc`'s admin API: forwards every request as the browser sent
    it (Host and Origin included, so the admin API's own rules judge them), keeping each
    POST's headers; yields the base URL the browser opens."""
    upstream = f"http://127.0.0.1:{svc.admin_port}"

    async def forward(request: web.Request) -> web.Response:
        if request.method == "POST":
            posts.append({"path": request.path_qs, **dict(request.headers)})
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        async with session.request(request.method, upstream + request.path_qs,
                                   headers=headers, data=await request.read(),
                                   allow_redirects=False) as resp:
            body = await resp.read()
            out = {k: v for k, v in resp.headers.items() if k.lower() not in HOP_BY_HOP}
            return web.Response(status=resp.status, body=body, headers=out)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    runner = web.AppRunner(app, access_log=None)
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        try:
            yield f"http://127.0.0.1:{runner.addresses[0][1]}"
        finally:
            await runner.cleanup()


async def rollout_of(svc: Service) -> dict[str, Any]:
    body = json.loads(svc.controller.status().model_dump_json())
    rollout: dict[str, Any] = body["routes"][0]["rollout"]
    return rollout


async def test_the_dashboard_shows_a_rollout_and_its_abort_button_reverts_it(
    tmp_path: Path, driver: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPLITPROXY_ADMIN_TOKEN", TOKEN)
    async with run_upstreams("stable", "canary") as b:
        cfg = rollout_config(b, weights={"stable": 100, "canary": 0},
                             analysis={"interval": "1s", "max_error_rate": 0.05},
                             rollout={"revision": "v2", "steps": [{"set_weight": 30},
                                                                  {"pause": {}}]})
        path = tmp_path / "shop.yaml"
        write_config(path, cfg)
        posts: list[dict[str, str]] = []
        async with run_service(path, watch=False) as svc, \
                recorded_admin(svc, posts) as base, \
                Load(svc.proxy_port, {"a": plain}, gap=0.02).running() as load:
            page = Page(driver)
            await page.open(base + "/dashboard")
            # The admin API has a token: the page asks for it, then shows the route.
            await page.wait_text("#config", "needs its token", "the token prompt")
            await page.type("#token", TOKEN + "\n")
            card = 'section[data-route="shop"]'
            await page.wait_text(f"{card} [data-field=phase]", "paused", "the pause {} step")
            assert "waiting for promote" in await page.text(f"{card} [data-field=reason]")
            steps = await page.text(f"{card} [data-field=timeline]")
            assert steps.split("\n") == ["30%", "until promote", "promoted"], steps
            assert await page.text(f"{card} ol.timeline li.current") == "until promote"
            await page.wait_text(f'{card} tr[data-version="canary"] [data-field=weight]',
                                 "30 (config 0)", "the canary's weight now")
            await page.wait_text(f'{card} tr[data-version="canary"] [data-field=realized]',
                                 lambda t: t.endswith("%") and t != "0.0%", "a realized share")
            await page.wait_text(f"{card} [data-field=guard]", "canary error_rate", "verdicts")
            assert b["canary"].requests > 0

            await page.click(f"{card} button[data-action=abort]")
            assert "confirm abort?" in await page.text(f"{card} button[data-action=abort]")
            assert (await rollout_of(svc))["phase"] == "paused"  # one click does nothing
            await page.click(f"{card} button[data-action=abort]")
            await page.wait_text(f"{card} [data-field=phase]", "aborted", "the abort")
            reason = await page.text(f"{card} [data-field=reason]")
            assert "aborted by operator" in reason and "manual: from the dashboard" in reason

            rollout = await rollout_of(svc)
            assert (rollout["phase"], rollout["aborted_by"]) == ("aborted", "operator")
            body = json.loads(svc.controller.status().model_dump_json())
            versions = body["routes"][0]["versions"]
            assert {v: s["effective_weight"] for v, s in versions.items()} == \
                {"stable": 100, "canary": 0}
            await page.wait_text(f'{card} tr[data-version="canary"] [data-field=weight]',
                                 lambda t: t == "0", "the canary out of traffic")
            served = len(load.hits)
            await wait_until(lambda: len(load.hits) >= served + 20, what="traffic after it")
            assert {h.served_by for h in load.since(rollout["aborted_at"])} == {"stable"}
            assert await page.call(
                lambda: driver.find_element(
                    "css selector", f"{card} button[data-action=retry]").is_enabled())

        [post] = posts  # what the browser sent: the rules the admin API sets for a browser
        assert post["path"] == "/routes/shop/abort?reason=from%20the%20dashboard"
        assert post["Content-Type"].startswith("application/json")
        assert post["X-Splitproxy-Action"] == "abort"
        assert post["Authorization"] == f"Bearer {TOKEN}"
        assert post["Origin"] == base and post["Sec-Fetch-Site"] == "same-origin"


async def test_the_dashboard_shows_the_guard_s_abort_with_its_numbers_then_retries(
    tmp_path: Path, driver: Any
) -> None:
    async with run_upstreams("stable", "canary") as b:
        cfg = rollout_config(b, weights={"stable": 100, "canary": 0},
                             analysis={"interval": "1s", "max_error_rate": 0.05},
                             rollout={"revision": "v2", "steps": [
                                 {"set_weight": 40}, {"pause": "1h"}, {"set_weight": 80},
                                 {"pause": {}}, {"set_weight": 100}]})
        path = tmp_path / "shop.yaml"
        write_config(path, cfg)
        async with run_service(path, watch=False) as svc, \
                recorded_admin(svc, []) as base, \
                Load(svc.proxy_port, {"a": plain}, gap=0.01).running():
            page = Page(driver)
            await page.open(base + "/dashboard")
            card = 'section[data-route="shop"]'
            await page.wait_text(f"{card} [data-field=phase]", "progressing", "the rollout")
            await page.wait_text(f"{card} ol.timeline li.current", "pause 1h", "step 2")

            b["canary"].fail_all = True
            # The guard needs a few slices of traffic (3 s and 30 requests each) to be sure.
            await page.wait_text(f"{card} [data-field=phase]", "aborted", "the guard's abort",
                                 timeout=45)
            reason = await page.text(f"{card} [data-field=reason]")
            assert "aborted by guard" in reason, reason
            assert "guard: canary error rate" in reason and "> 5%" in reason, reason
            assert "errors)" in reason and "n=" in reason, reason
            assert "fail" in await page.text(f"{card} [data-field=guard] [data-field=outcome]")
            if SCREENSHOT:
                await page.screenshot(SCREENSHOT)

            b["canary"].fail_all = False
            run = (await rollout_of(svc))["run"]
            await page.click(f"{card} button[data-action=retry]")
            await page.wait_text(f"{card} [data-field=phase]", "progressing", "the retry")
            assert (await rollout_of(svc))["run"] != run
            await page.wait_text(f"{card} [data-field=events]", "new run", "the run in history")
            await page.click(f"{card} button[data-action=pause]")
            await page.wait_text(f"{card} [data-field=reason]", "manual", "the pause")
            await page.click(f"{card} button[data-action=resume]")
            await page.wait_text(f"{card} [data-field=phase]", "progressing", "the resume")
            await page.click(f"{card} button[data-action=promote]")  # skips the 1 h pause
            await page.wait_text(f"{card} ol.timeline li.current", "until promote",
                                 "the promote past the timed pause")
            await page.click(f"{card} button[data-action=promote]")
            await page.wait_text(f"{card} [data-field=phase]", "promoted", "the promotion")
            assert (await rollout_of(svc))["phase"] == "promoted"


async def test_the_page_is_served_without_the_token_and_its_data_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPLITPROXY_ADMIN_TOKEN", TOKEN)
    async with run_upstreams("stable", "canary") as b:
        path = tmp_path / "shop.yaml"
        write_config(path, rollout_config(b, weights={"stable": 90, "canary": 10}))
        async with run_service(path, watch=False) as svc, aiohttp.ClientSession() as session:
            base = f"http://127.0.0.1:{svc.admin_port}"
            for asset, kind in (("", "text/html"), ("/dashboard.js", "text/javascript"),
                                ("/dashboard.css", "text/css")):
                async with session.get(base + "/dashboard" + asset) as resp:
                    assert resp.status == 200 and resp.content_type == kind
                    assert resp.headers["X-Frame-Options"] == "DENY"
                    assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]
                    assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
            async with session.get(base + "/", allow_redirects=False) as resp:
                assert (resp.status, resp.headers["Location"]) == (302, "/dashboard")
            for data in ("/dashboard/plan", "/status"):
                async with session.get(base + data) as resp:
                    assert resp.status == 401
            auth = {"Authorization": f"Bearer {TOKEN}"}
            async with session.get(base + "/dashboard/plan", headers=auth) as resp:
                assert await resp.json() == {"routes": {"shop": {"strategy": "canary",
                                                                 "steps": []}}}
