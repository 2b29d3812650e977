"""TLS to upstreams: `https://` endpoints verified by default, refused (and counted as `tls`)
when their certificate is expired, for another name or from an unknown CA, reused across
requests like cleartext connections, and a client certificate for upstreams that ask."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.support.configs import proxy_config
from tests.support.proxy import run_proxy, version_errors
from tests.support.rawhttp import assert_error, get, raw_client
from tests.support.tls import issue, server_context, write_ca
from tests.support.upstream import Upstream, run_upstream


def https_route(up: Upstream, **tls: Any) -> dict[str, Any]:
    version: dict[str, Any] = {"endpoints": [up.url]}
    if tls:
        version["tls"] = tls
    return {"name": "shop", "versions": {"stable": version}, "weights": {"stable": 1}}


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


async def test_a_verified_https_endpoint_is_proxied_on_reused_connections(
        tmp_path: Path, ca: trustme.CA) -> None:
    cert = issue(ca, tmp_path, "up", "127.0.0.1", "localhost")
    ca_file = write_ca(ca, tmp_path)
    async with run_upstream("stable", ssl_context=server_context(cert)) as up:
        async with run_proxy(proxy_config([https_route(up, ca_file=str(ca_file))])) as srv:
            async with raw_client(srv.port) as c:
                statuses = [(await c.request("GET", "/")).status for _ in range(5)]
    assert statuses == [200] * 5
    assert up.requests == 5
    assert len(up.peers) == 1  # one TLS connection, kept alive and reused
    assert version_errors(srv) == {}


@pytest.mark.parametrize("problem", ["expired", "other name", "unknown ca"])
async def test_a_bad_upstream_certificate_is_refused_and_counted_as_tls(
        tmp_path: Path, ca: trustme.CA, problem: str) -> None:
    ca_file = write_ca(ca, tmp_path)
    if problem == "expired":
        cert = issue(ca, tmp_path, "up", "127.0.0.1", expired=True)
    elif problem == "other name":
        cert = issue(ca, tmp_path, "up", "api.other.example")
    else:
        cert = issue(trustme.CA(), tmp_path, "up", "127.0.0.1")
    async with run_upstream("stable", ssl_context=server_context(cert)) as up:
        async with run_proxy(proxy_config([https_route(up, ca_file=str(ca_file))])) as srv:
            resp = await get(srv.port, "/")
    assert_error(resp, 502)
    assert up.requests == 0
    assert version_errors(srv) == {"tls": 1}


async def test_the_system_store_is_the_default_and_refuses_a_private_ca(
        tmp_path: Path, ca: trustme.CA) -> None:
    cert = issue(ca, tmp_path, "up", "127.0.0.1")
    async with run_upstream("stable", ssl_context=server_context(cert)) as up:
        async with run_proxy(proxy_config([https_route(up)])) as srv:
            resp = await get(srv.port, "/")
    assert_error(resp, 502)
    assert version_errors(srv) == {"tls": 1}


async def test_server_name_sets_the_name_verified(tmp_path: Path, ca: trustme.CA) -> None:
    cert = issue(ca, tmp_path, "up", "api.internal")
    ca_file = write_ca(ca, tmp_path)
    async with run_upstream("stable", ssl_context=server_context(cert)) as up:
        route = https_route(up, ca_file=str(ca_file), server_name="api.internal")
        async with run_proxy(proxy_config([route])) as srv:
            resp = await get(srv.port, "/")
    assert resp.status == 200


async def test_verify_false_accepts_any_certificate(tmp_path: Path, ca: trustme.CA) -> None:
    cert = issue(ca, tmp_path, "up", "somewhere.else", expired=True)
    async with run_upstream("stable", ssl_context=server_context(cert)) as up:
        async with run_proxy(proxy_config([https_route(up, verify=False)])) as srv:
            resp = await get(srv.port, "/")
    assert resp.status == 200


async def test_a_client_certificate_is_presented_to_an_upstream_that_asks(
        tmp_path: Path, ca: trustme.CA) -> None:
    cert = issue(ca, tmp_path, "up", "127.0.0.1")
    ca_file = write_ca(ca, tmp_path)
    proxy_cert = issue(ca, tmp_path, "proxy", "proxy.internal", common_name="splitproxy")
    upstream_ctx = server_context(cert)
    upstream_ctx.verify_mode = ssl.CERT_REQUIRED
    upstream_ctx.load_verify_locations(cafile=str(ca_file))
    async with run_upstream("stable", ssl_context=upstream_ctx) as up:
        with_cert = https_route(up, ca_file=str(ca_file), **proxy_cert.client_side())
        async with run_proxy(proxy_config([with_cert])) as srv:
            ok = await get(srv.port, "/")
        async with run_proxy(proxy_config([https_route(up, ca_file=str(ca_file))])) as srv:
            refused = await get(srv.port, "/")
    assert ok.status == 200
    assert refused.status == 502  # the upstream ended the handshake: no answer came

