"""Who may use the admin API (splitproxy.control.adminguard), through a real Service on
127.0.0.1: probes and /metrics without the token, /status and actions with it; cross-site
browser requests and foreign Host names refused; a token added, changed, rotated or removed
while the proxy runs is the one enforced."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from splitproxy.control.adminguard import host_name
from splitproxy.control.service import Service
from splitproxy.control.status import AdminStatus
from tests.support.configs import proxy_config, route
from tests.support.service import run_service, write_config
from tests.support.waiting import WAIT, wait_until

PROBES = ("/healthz", "/readyz")
STEPS = {"steps": [{"set_weight": 10}, {"pause": {}}, {"set_weight": 50}, {"pause": {}},
                  {"set_weight": 100}]}
FORM = "application/x-www-form-urlencoded"


def rollout_config(**sections: Any) -> dict[str, Any]:
    """Route "shop" with a rollout waiting at a manual pause; nothing listens at its
    endpoints (no request is proxied here)."""
    r = route({"stable": "http://127.0.0.1:9", "canary": "http://127.0.0.1:9"},
              {"stable": 100, "canary": 0})
    r["rollout"] = STEPS
    return proxy_config([r], **sections)


@pytest.fixture(autouse=True)
def no_env_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPLITPROXY_ADMIN_TOKEN", raising=False)


@pytest.fixture
async def plain() -> AsyncIterator[aiohttp.ClientSession]:
    """A session that adds nothing: each request carries only the headers a test gives."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT)) as session:
        yield session


async def call(session: aiohttp.ClientSession, svc: Service, method: str, path: str,
               headers: Mapping[str, str] | None = None, data: str | None = None,
               ) -> tuple[int, str]:
    url = f"http://127.0.0.1:{svc.admin_port}{path}"
    async with session.request(method, url, headers=dict(headers or {}), data=data) as resp:
        return resp.status, await resp.text()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


ACTION = {"X-Splitproxy-Action": "1"}


def phase(svc: Service) -> str:
    return str(svc.controller.engine.states["shop"].phase)


def step(svc: Service) -> int:
    return svc.controller.engine.states["shop"].step


async def paused(svc: Service, at: int) -> None:
    """Waits for the rollout to stand at the manual pause of step `at`."""
    await wait_until(lambda: phase(svc) == "paused" and step(svc) == at, WAIT,
                     f"paused at step {at}")


def _admin(svc: Service) -> AdminStatus:
    admin = svc.controller.status().admin
    assert admin is not None
    return admin


def generation(svc: Service) -> int:
    return int(svc.controller.status().config.generation)


async def wait_generation(svc: Service, n: int) -> None:
    await wait_until(lambda: generation(svc) >= n, WAIT, f"config generation {n}")
    assert generation(svc) == n


# --------------------------------------------------------------------------- the token


async def test_probes_and_metrics_answer_without_the_token_while_status_needs_it(
    tmp_path: Path, plain: aiohttp.ClientSession
) -> None:
    (tmp_path / "tok").write_text("s3cret-token\n")
    path = tmp_path / "config.yaml"
    write_config(path, rollout_config(admin={"token_file": "tok"}))
    async with run_service(path) as svc:
        await paused(svc, 1)
        for probe in (*PROBES, "/metrics"):
            assert (await call(plain, svc, "GET", probe))[0] == 200, probe
            assert (await call(plain, svc, "GET", probe, bearer("wrong")))[0] == 200, probe
        status, body = await call(plain, svc, "GET", "/metrics")
        assert "splitproxy_route_weight" in body
        for headers in ({}, bearer("wrong"), {"Authorization": "s3cret-token"}):
            status, body = await call(plain, svc, "GET", "/status", headers)
            assert status == 401 and "json" not in body, (headers, status)
            status, _ = await call(plain, svc, "POST", "/routes/shop/pause",
                                   {**ACTION, **headers})
            assert status == 401, headers
        status, _ = await call(plain, svc, "GET", "/nowhere")
        assert status == 401  # every path but the probes and /metrics
        assert phase(svc) == "paused"
        status, body = await call(plain, svc, "GET", "/status", bearer("s3cret-token"))
        assert status == 200, body
        status, body = await call(plain, svc, "POST", "/routes/shop/abort",
                                  {**ACTION, **bearer("s3cret-token")})
        assert status == 200, body
        assert phase(svc) == "aborted"


async def test_metrics_auth_puts_metrics_behind_the_token(
    tmp_path: Path, plain: aiohttp.ClientSession
) -> None:
    (tmp_path / "tok").write_text("s3cret-token\n")
    path = tmp_path / "config.yaml"
    write_config(path, rollout_config(admin={"token_file": "tok", "metrics_auth": True}))
    async with run_service(path) as svc:
        assert (await call(plain, svc, "GET", "/metrics"))[0] == 401
        assert (await call(plain, svc, "GET", "/metrics", bearer("s3cret-token")))[0] == 200
        for probe in PROBES:
            assert (await call(plain, svc, "GET", probe))[0] == 200, probe


async def test_a_token_from_the_environment_guards_a_non_loopback_admin_api(
    tmp_path: Path, plain: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPLITPROXY_ADMIN_TOKEN", "from-env")
    path = tmp_path / "config.yaml"
    write_config(path, rollout_config(admin={"listen": "0.0.0.0:0"}))
    async with run_service(path) as svc:
        assert (await call(plain, svc, "GET", "/healthz"))[0] == 200
        assert (await call(plain, svc, "GET", "/status"))[0] == 401
        status, body = await call(plain, svc, "GET", "/status", bearer("from-env"))
        assert status == 200, body
        admin = _admin(svc).model_dump()
        assert admin["token"] == "required" and admin["token_source"] == "environment"


# --------------------------------------------------------------------------- browsers


async def test_a_cross_site_browser_request_is_refused_and_a_same_origin_one_accepted(
    tmp_path: Path, plain: aiohttp.ClientSession
) -> None:
    # No token (loopback): the browser rules are the API's only defence.
    path = tmp_path / "config.yaml"
    write_config(path, rollout_config())
    async with run_service(path) as svc:
        await paused(svc, 1)
        own = f"http://127.0.0.1:{svc.admin_port}"
        # What a page on evil.example submits with a <form method=post>.
        form = {"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site",
                "Content-Type": FORM}
        status, body = await call(plain, svc, "POST", "/routes/shop/abort", form, "x=1")
        assert status == 403, body
        # Each rule alone refuses it, whatever else the request gets right.
        refused: list[dict[str, str]] = [
            {"Origin": "http://evil.example", **ACTION},  # a script that sent the header
            {"Origin": "null", **ACTION},  # sandboxed frame, file://
            {"Origin": f"http://localhost:{svc.admin_port + 1}", **ACTION},  # another port
            {"Sec-Fetch-Site": "cross-site", **ACTION},
            {"Sec-Fetch-Site": "same-site", **ACTION},  # another port of the same host
            {"Content-Type": FORM},  # a form with no Origin (an old browser)
            {"Content-Type": "text/plain"},
            {"Content-Type": "multipart/form-data; boundary=x"},
            {},
        ]
        for headers in refused:
            status, body = await call(plain, svc, "POST", "/routes/shop/abort", headers, "x")
            assert status == 403, (headers, status, body)
        status, _ = await call(plain, svc, "GET", "/status",
                               {"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"})
        assert status == 403  # a cross-site script cannot read it either
        assert phase(svc) == "paused" and step(svc) == 1  # nothing got through

        # The same origin (a page served by the admin API itself) is accepted.
        same = {"Origin": own, "Sec-Fetch-Site": "same-origin"}
        status, body = await call(plain, svc, "GET", "/status", same)
        assert status == 200, body
        status, body = await call(plain, svc, "POST", "/routes/shop/promote",
                                  {**same, "Content-Type": "application/json"}, "{}")
        assert status == 200, body
        await paused(svc, 3)
        # As are a typed-in URL and tools that send no browser headers (curl, the CLI).
        assert (await call(plain, svc, "GET", "/status", {"Sec-Fetch-Site": "none"}))[0] == 200
        status, body = await call(plain, svc, "POST", "/routes/shop/abort", ACTION)
        assert status == 200, body
        assert phase(svc) == "aborted"


async def test_a_foreign_host_is_refused_with_421(
    tmp_path: Path, plain: aiohttp.ClientSession
) -> None:
    path = tmp_path / "config.yaml"
    write_config(path, rollout_config(admin={"allowed_hosts": ["splitproxy-edge.shop.svc"]}))
    async with run_service(path) as svc:
        await paused(svc, 1)
        port = svc.admin_port
        # DNS rebinding: evil.example now resolves to 127.0.0.1, so the browser thinks the
        # page and the API share an origin; only the Host header tells.
        rebound = {"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}",
                   "Sec-Fetch-Site": "same-origin"}
        for method, target, extra in (("GET", "/status", {}), ("GET", "/healthz", {}),
                                      ("POST", "/routes/shop/abort", ACTION)):
            status, body = await call(plain, svc, method, target, {**rebound, **extra})
            assert status == 421, (target, status, body)
            assert "evil.example" in body
        assert phase(svc) == "paused"
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST", f"[::1]:{port}",
                     f"10.1.2.3:{port}",  # a pod IP: the kubelet's probes, Prometheus
                     f"splitproxy-edge.shop.svc:{port}", "splitproxy-edge.shop.svc."):
            status, body = await call(plain, svc, "GET", "/status", {"Host": host})
            assert status == 200, (host, status, body)
        for host in ("localhost.evil.example", "splitproxy-edge.shop.svc.evil.example",
                     "127.0.0.1.nip.io"):
            assert (await call(plain, svc, "GET", "/status", {"Host": host}))[0] == 421, host


def test_host_names_are_read_as_a_browser_sends_them() -> None:
    assert host_name("Example.COM:9901") == "example.com"
    assert host_name("[::1]:9901") == "::1"
    assert host_name("localhost.") == "localhost"
    assert host_name("") is None


# --------------------------------------------------------------------------- reloads


async def test_a_token_changed_by_reload_is_enforced(
    tmp_path: Path, plain: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "splitproxy")
    (tmp_path / "tok").write_text("first-token\n")
    path = tmp_path / "config.yaml"
    write_config(path, rollout_config(admin={"token_file": "tok"}))
    async with run_service(path) as svc:
        assert (await call(plain, svc, "GET", "/status", bearer("first-token")))[0] == 200
        # The file's content changes (a rotated Secret): enforced at the next request.
        (tmp_path / "tok").write_text("second-token\n")
        assert (await call(plain, svc, "GET", "/status", bearer("first-token")))[0] == 401
        assert (await call(plain, svc, "GET", "/status", bearer("second-token")))[0] == 200
        # The config names another file: enforced once the reload applies.
        (tmp_path / "other-tok").write_text("third-token\n")
        write_config(path, rollout_config(admin={"token_file": "other-tok"}))
        await wait_generation(svc, 2)
        for old in ("first-token", "second-token"):
            assert (await call(plain, svc, "GET", "/status", bearer(old)))[0] == 401, old
        status, body = await call(plain, svc, "GET", "/status", bearer("third-token"))
        assert status == 200, body
        # A token file that turns unreadable keeps the token in force, never an open API.
        (tmp_path / "other-tok").unlink()
        assert (await call(plain, svc, "GET", "/status"))[0] == 401
        status, body = await call(plain, svc, "GET", "/status", bearer("third-token"))
        assert status == 200, body
        assert "cannot read" in (_admin(svc).token_error or "")
        # Removed by reload (loopback, so allowed): open again, and said loudly.
        write_config(path, rollout_config())
        await wait_generation(svc, 3)
        assert (await call(plain, svc, "GET", "/status"))[0] == 200
        assert _admin(svc).token == "none"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
                and r.name == "splitproxy.control.adminguard"]
    assert any("re-read from" in w for w in warnings), warnings
    assert any("changed by reload" in w for w in warnings), warnings
    assert any("removed by reload" in w for w in warnings), warnings


async def test_a_token_added_by_reload_is_enforced(
    tmp_path: Path, plain: aiohttp.ClientSession
) -> None:
    path = tmp_path / "config.yaml"
    write_config(path, rollout_config())
    async with run_service(path) as svc:
        assert (await call(plain, svc, "GET", "/status"))[0] == 200
        (tmp_path / "tok").write_text("added-token\n")
        write_config(path, rollout_config(admin={"token_file": "tok"}))
        await wait_generation(svc, 2)
        assert (await call(plain, svc, "GET", "/status"))[0] == 401
        status, _ = await call(plain, svc, "POST", "/routes/shop/abort", ACTION)
        assert status == 401
        assert (await call(plain, svc, "GET", "/status", bearer("added-token")))[0] == 200
        assert (await call(plain, svc, "GET", "/healthz"))[0] == 200
        admin = _admin(svc).model_dump()
        assert admin["token"] == "required" and admin["token_file"] == str(tmp_path / "tok")


async def test_a_reload_naming_an_unreadable_token_file_is_refused_whole(
    tmp_path: Path, plain: aiohttp.ClientSession
) -> None:
    path = tmp_path / "config.yaml"
    write_config(path, rollout_config())
    async with run_service(path) as svc:
        cfg = rollout_config(admin={"token_file": "missing"})
        cfg["routes"][0]["weights"] = {"stable": 50, "canary": 50}
        write_config(path, cfg)

        def refused() -> bool:
            return svc.controller.status().config.last_reload.result == "error"

        await wait_until(refused, WAIT, "the reload refused")
        last = svc.controller.status().config.last_reload.model_dump()
        assert "admin.token_file: cannot read" in last["error"]
        assert generation(svc) == 1  # the weights did not apply either
        assert (await call(plain, svc, "GET", "/status"))[0] == 200


async def test_a_reload_cannot_remove_the_token_of_a_non_loopback_admin_api(
    tmp_path: Path, plain: aiohttp.ClientSession
) -> None:
    (tmp_path / "tok").write_text("s3cret-token\n")
    path = tmp_path / "config.yaml"
    write_config(path, rollout_config(admin={"listen": "0.0.0.0:0", "token_file": "tok"}))
    async with run_service(path) as svc:
        # Moving admin.listen to loopback needs a restart: the API still listens on 0.0.0.0,
        # so dropping the token with it is refused.
        write_config(path, rollout_config(admin={"listen": "127.0.0.1:0"}))

        def refused() -> bool:
            return svc.controller.status().config.last_reload.result == "error"

        await wait_until(refused, WAIT, "the reload refused")
        error = svc.controller.status().config.last_reload.error
        assert "0.0.0.0:0 is not a loopback address" in (error or "")
        assert (await call(plain, svc, "GET", "/status"))[0] == 401
        assert (await call(plain, svc, "GET", "/status", bearer("s3cret-token")))[0] == 200


async def test_a_secret_rotated_by_a_kubernetes_symlink_swap_is_enforced(
    tmp_path: Path, plain: aiohttp.ClientSession
) -> None:
    # A projected volume: config.yaml and admin-token both through the `..data` symlink.
    def version(name: str, token: str) -> None:
        (tmp_path / name).mkdir()
        write_config(tmp_path / name / "config.yaml",
                     rollout_config(admin={"token_file": "admin-token"}))
        (tmp_path / name / "admin-token").write_text(token)

    version("..2026_01", "before-rotation")
    os.symlink("..2026_01", tmp_path / "..data")
    for f in ("config.yaml", "admin-token"):
        os.symlink(f"..data/{f}", tmp_path / f)
    async with run_service(tmp_path / "config.yaml") as svc:
        assert (await call(plain, svc, "GET", "/status", bearer("before-rotation")))[0] == 200
        version("..2026_02", "after-rotation")
        os.symlink("..2026_02", tmp_path / "..data_tmp")
        os.rename(tmp_path / "..data_tmp", tmp_path / "..data")
        assert (await call(plain, svc, "GET", "/status", bearer("before-rotation")))[0] == 401
        assert (await call(plain, svc, "GET", "/status", bearer("after-rotation")))[0] == 200


async def test_admin_listen_changed_by_reload_is_reported_as_needing_a_restart(
    tmp_path: Path, plain: aiohttp.ClientSession
) -> None:
    path = tmp_path / "config.yaml"
    write_config(path, rollout_config())
    async with run_service(path) as svc:
        write_config(path, rollout_config(admin={"listen": "127.0.0.1:1"},
                                          logging={"format": "json"}))
        await wait_generation(svc, 2)
        needed = [r.model_dump() for r in svc.controller.status().config.restart_needed]
        assert {n["field"]: n["configured"] for n in needed} == {
            "admin.listen": "127.0.0.1:1", "logging.format": "json"}
        assert (await call(plain, svc, "GET", "/healthz"))[0] == 200  # still where it was
        write_config(path, rollout_config())
        await wait_generation(svc, 3)
        assert [r.model_dump() for r in svc.controller.status().config.restart_needed] == []
