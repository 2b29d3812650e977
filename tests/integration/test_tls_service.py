"""TLS listeners in a whole splitproxy: `--workers N` serves every listener from every worker,
and a config reload that names new certificate files serves them from the next handshake."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import trustme

from tests.support.configs import proxy_config, route
from tests.support.ports import free_port
from tests.support.rawhttp import get
from tests.support.service import (
    admin,
    generation,
    metric,
    running_service,
    scrape,
    write_config,
)
from tests.support.tls import client_context, issue, peer_names, tls_client, write_ca
from tests.support.upstream import run_upstream
from tests.support.waiting import wait_until


def listeners(plain: int, secure: int, cert: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"address": f"127.0.0.1:{plain}"},
            {"address": f"127.0.0.1:{secure}", "tls": {"certificates": [cert]}}]


async def test_every_worker_serves_every_listener_and_counts_a_refused_reload(
        tmp_path: Path) -> None:
    ca = trustme.CA()
    site = issue(ca, tmp_path, "site", "localhost")
    ca_file = write_ca(ca, tmp_path)
    plain, secure = free_port(), free_port()
    async with run_upstream("stable") as up:
        cfg = proxy_config([route({"stable": up.url})],
                           listen=listeners(plain, secure, site.listener()))
        async with running_service(tmp_path, cfg, watch=False, workers=2, start_wait=60,
                                   stop_wait=60) as (svc, _):
            protos = set()
            for _ in range(10):
                resp = await get(plain, "/headers")
                async with tls_client(secure, client_context(ca_file)) as c:
                    secure_resp = await c.request("GET", "/headers")
                for r in (resp, secure_resp):
                    assert r.status == 200
                    pairs = json.loads(r.body)["headers"]
                    protos |= {v for k, v in pairs if k.lower() == "x-forwarded-proto"}
            # A broken certificate: each worker refuses it, the metric sums them.
            site.cert.write_text("not a certificate")
            async with admin(svc) as session:

                async def refused() -> bool:
                    samples = await scrape(session)
                    return metric(samples, "splitproxy_tls_certificate_reloads_total",
                                  result="error") == 2

                await wait_until(refused, 10, "both workers' refusals in /metrics")
            async with tls_client(secure, client_context(ca_file)) as c:
                assert (await c.request("GET", "/")).status == 200  # the old one serves on
    assert protos == {"http", "https"}
    assert up.requests == 21


async def test_a_reload_naming_new_certificate_files_serves_them(tmp_path: Path) -> None:
    ca = trustme.CA()
    old = issue(ca, tmp_path, "old", "localhost")
    new = issue(ca, tmp_path, "new", "localhost", "new.example")
    ca_file = write_ca(ca, tmp_path)
    plain, secure = free_port(), free_port()
    async with run_upstream("stable") as up:
        cfg = proxy_config([route({"stable": up.url})],
                           listen=listeners(plain, secure, old.listener()))
        async with running_service(tmp_path, cfg) as (svc, path):
            async with tls_client(secure, client_context(ca_file)) as c:
                before = peer_names(c)
            write_config(path, {**cfg, "listen": listeners(plain, secure, new.listener())})
            await wait_until(lambda: generation(svc) == 2, what="the reload")
            async with tls_client(secure, client_context(ca_file)) as c:
                after = peer_names(c)
                assert (await c.request("GET", "/")).status == 200
    assert (before, after) == (["localhost"], ["localhost", "new.example"])
