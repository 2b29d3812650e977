"""TLS at the edge: several listeners, certificates by SNI, the plaintext-to-HTTPS redirect,
client certificates (mTLS), and certificates replaced under load. Real sockets, real `ssl`
clients, certificates made by trustme."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
from pathlib import Path
from typing import Any

import pytest
import trustme

from splitproxy.dataplane.server import ProxyServer
from tests.support.configs import proxy_config, route
from tests.support.proxy import run_proxy
from tests.support.rawhttp import get, raw_client
from tests.support.tls import CertFiles, client_context, issue, peer_names, tls_client, write_ca
from tests.support.upstream import Upstream, run_upstream
from tests.support.waiting import wait_until


def tls_listener(*certs: dict[str, Any], **tls: Any) -> dict[str, Any]:
    return {"address": "127.0.0.1:0", "tls": {"certificates": list(certs),
                                              "reload_interval": "0.05s", **tls}}


def headers_of(body: bytes) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in json.loads(body)["headers"]:
        out.setdefault(name.lower(), []).append(value)
    return out


def config(up: Upstream, *listeners: dict[str, Any], **route_kw: Any) -> dict[str, Any]:
    return proxy_config([route({"stable": up.url}, **route_kw)], listen=list(listeners))


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


async def test_a_plaintext_and_a_tls_listener_forward_their_own_scheme(
        tmp_path: Path, ca: trustme.CA) -> None:
    site = issue(ca, tmp_path, "site", "localhost")
    ca_file = write_ca(ca, tmp_path)
    async with run_upstream("stable") as up:
        cfg = config(up, {"address": "127.0.0.1:0"}, tls_listener(site.listener()))
        async with run_proxy(cfg) as srv:
            plain_port, tls_port = srv.ports
            plain = await get(plain_port, "/headers")
            async with tls_client(tls_port, client_context(ca_file)) as c:
                secure = await c.request("GET", "/headers")
                alpn = c.writer.get_extra_info("ssl_object").selected_alpn_protocol()
                claimed = await c.request("GET", "/headers",
                                          headers={"X-Forwarded-Proto": "http"})
            behind_lb = await get(plain_port, "/headers", headers={"X-Forwarded-Proto": "https"})
    assert headers_of(plain.body)["x-forwarded-proto"] == ["http"]
    assert headers_of(secure.body)["x-forwarded-proto"] == ["https"]
    # TLS ended here: the proxy knows the scheme; on plaintext a load balancer's value stays.
    assert headers_of(claimed.body)["x-forwarded-proto"] == ["https"]
    assert headers_of(behind_lb.body)["x-forwarded-proto"] == ["https"]
    assert alpn == "http/1.1"


async def test_sni_picks_the_certificate_and_the_first_answers_the_rest(
        tmp_path: Path, ca: trustme.CA) -> None:
    a = issue(ca, tmp_path, "a", "a.example")
    b = issue(ca, tmp_path, "b", "b.example", "*.b.example")
    ca_file = write_ca(ca, tmp_path)
    async with run_upstream("stable") as up:
        cfg = config(up, tls_listener(a.listener("a.example"),
                                      b.listener("b.example", "*.b.example")))
        async with run_proxy(cfg) as srv:
            port = srv.ports[0]
            seen = {}
            # check_hostname is on: each handshake verifies the name it asked for.
            for name in ("a.example", "b.example", "api.b.example"):
                async with tls_client(port, client_context(ca_file), name) as c:
                    seen[name] = peer_names(c)
                    assert (await c.request("GET", "/")).status == 200
            async with tls_client(port, client_context(None), None) as c:
                seen["no sni"] = peer_names(c)
            async with tls_client(port, client_context(None), "other.example") as c:
                seen["unknown"] = peer_names(c)
    assert seen == {"a.example": ["a.example"], "b.example": ["b.example", "*.b.example"],
                    "api.b.example": ["b.example", "*.b.example"], "no sni": ["a.example"],
                    "unknown": ["a.example"]}


async def test_the_plaintext_listener_redirects_to_the_tls_one(
        tmp_path: Path, ca: trustme.CA) -> None:
    site = issue(ca, tmp_path, "site", "localhost")
    async with run_upstream("stable") as up:
        cfg = config(up, {"address": "127.0.0.1:0", "redirect_to_https": True},
                     tls_listener(site.listener()))
        async with run_proxy(cfg) as srv:
            plain_port, tls_port = srv.ports
            resp = await get(plain_port, "/shop/cart?id=7", host="shop.example")
            post = await get(plain_port, "/pay", method="POST", body=b"x=1",
                             host="shop.example:80")
    assert resp.status == 308
    assert resp.header("location") == f"https://shop.example:{tls_port}/shop/cart?id=7"
    assert post.status == 308  # keeps the method: the client posts again over TLS
    assert post.header("location") == f"https://shop.example:{tls_port}/pay"
    assert up.requests == 0


async def test_mtls_accepts_the_configured_ca_and_sends_the_identity_upstream(
        tmp_path: Path, ca: trustme.CA) -> None:
    site = issue(ca, tmp_path, "site", "localhost")
    ca_file = write_ca(ca, tmp_path)
    clients_ca = trustme.CA()
    clients_ca_file = write_ca(clients_ca, tmp_path, "clients-ca.pem")
    good = issue(clients_ca, tmp_path, "good", "client.internal", common_name="checkout")
    stranger = issue(trustme.CA(), tmp_path, "stranger", "client.internal",
                     common_name="checkout")
    async with run_upstream("stable") as up:
        cfg = config(up, tls_listener(site.listener(), client_ca=str(clients_ca_file)))
        async with run_proxy(cfg) as srv:
            port = srv.ports[0]
            async with tls_client(port, client_context(ca_file, good)) as c:
                ok = await c.request("GET", "/headers",
                                     headers={"X-Client-Cert-Subject": "CN=admin"})
            for cert in (stranger, None):
                with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
                    async with tls_client(port, client_context(ca_file, cert)) as c:
                        await c.request("GET", "/headers")
    assert ok.status == 200
    subject = headers_of(ok.body)["x-client-cert-subject"]
    assert len(subject) == 1 and subject[0].startswith("CN=checkout,"), subject
    assert up.requests == 1  # the refused clients reached nothing


async def test_optional_client_auth_serves_clients_without_a_certificate_anonymously(
        tmp_path: Path, ca: trustme.CA) -> None:
    site = issue(ca, tmp_path, "site", "localhost")
    ca_file = write_ca(ca, tmp_path)
    client = issue(ca, tmp_path, "client", "client.internal", common_name="checkout")
    async with run_upstream("stable") as up:
        cfg = config(up, tls_listener(site.listener(), client_ca=str(ca_file),
                                      client_auth="optional"))
        async with run_proxy(cfg) as srv:
            seen = {}
            for name, cert in (("with", client), ("without", None)):
                async with tls_client(srv.ports[0], client_context(ca_file, cert)) as c:
                    resp = await c.request("GET", "/headers", headers={
                        "X-Client-Cert-Subject": "CN=admin"})
                    assert resp.status == 200
                    seen[name] = headers_of(resp.body).get("x-client-cert-subject")
    assert seen["with"] is not None and seen["with"][0].startswith("CN=checkout,")
    assert seen["without"] is None  # anonymous, and the claimed identity removed


async def test_the_identity_header_is_stripped_on_plaintext_listeners() -> None:
    async with run_upstream("stable") as up:
        async with run_proxy(config(up, {"address": "127.0.0.1:0"})) as srv:
            resp = await get(srv.port, "/headers", headers={"X-Client-Cert-Subject": "CN=x"})
    assert "x-client-cert-subject" not in headers_of(resp.body)


async def test_routing_hashes_on_the_client_identity(tmp_path: Path, ca: trustme.CA) -> None:
    """The verified identity is what routing reads: a client cannot claim another's."""
    site = issue(ca, tmp_path, "site", "localhost")
    ca_file = write_ca(ca, tmp_path)
    client = issue(ca, tmp_path, "client", "client.internal", common_name="tenant-7")
    async with run_upstream("stable") as stable, run_upstream("canary") as canary:
        cfg = proxy_config(
            [route({"stable": stable.url, "canary": canary.url},
                   sticky={"hash_header": "X-Client-Cert-Subject"})],
            listen=[tls_listener(site.listener(), client_ca=str(ca_file))])
        async with run_proxy(cfg) as srv:
            served = set()
            for i in range(12):
                async with tls_client(srv.ports[0], client_context(ca_file, client)) as c:
                    resp = await c.request("GET", "/", headers={
                        "X-Client-Cert-Subject": f"CN=someone-{i}"})
                    served.add(resp.header("x-served-by"))
    assert len(served) == 1  # one identity, one version, whatever the header claimed


def replace(files: CertFiles, new: CertFiles) -> None:
    """Swap the files in atomically, as a certificate manager does."""
    for src, dst in ((new.key, files.key), (new.cert, files.cert)):
        tmp = dst.with_suffix(".tmp")
        tmp.write_bytes(src.read_bytes())
        os.replace(tmp, dst)


async def test_certificates_are_replaced_under_load_without_losing_a_request(
        tmp_path: Path, ca: trustme.CA, caplog: pytest.LogCaptureFixture) -> None:
    site = issue(ca, tmp_path, "site", "localhost")
    renewed = issue(ca, tmp_path, "renewed", "localhost", "renewed.example")
    ca_file = write_ca(ca, tmp_path)
    failures: list[BaseException] = []
    statuses: list[int] = []

    kept: list[int] = []  # requests answered on connections opened before the swap

    async def client(srv: ProxyServer, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:  # a new connection each time: every request is a new handshake
                async with tls_client(srv.ports[0], client_context(ca_file)) as c:
                    statuses.append((await c.request("GET", "/")).status)
            except Exception as exc:
                failures.append(exc)

    async def keep_alive(srv: ProxyServer, stop: asyncio.Event) -> None:
        try:  # one connection for the whole test: it keeps the certificate it started with
            async with tls_client(srv.ports[0], client_context(ca_file)) as c:
                while not stop.is_set():
                    statuses.append((await c.request("GET", "/")).status)
                    kept.append(1)
        except Exception as exc:
            failures.append(exc)

    async with run_upstream("stable") as up:
        async with run_proxy(config(up, tls_listener(site.listener()))) as srv:
            server_tls = srv.tls[0]
            assert server_tls is not None
            stop = asyncio.Event()
            tasks = [asyncio.create_task(client(srv, stop)) for _ in range(6)]
            tasks += [asyncio.create_task(keep_alive(srv, stop)) for _ in range(2)]
            await wait_until(lambda: len(statuses) > 50, what="traffic before the swap")
            replace(site, renewed)
            await wait_until(lambda: server_tls.reloads == 1, what="the reload")
            after, kept_before = len(statuses), len(kept)
            await wait_until(lambda: len(statuses) > after + 50 and len(kept) > kept_before + 10,
                             what="traffic after it, new and kept-alive connections")
            async with tls_client(srv.ports[0], client_context(ca_file)) as c:
                names = peer_names(c)
            # A broken certificate is refused: the renewed one keeps serving.
            site.cert.write_text("not a certificate")
            await wait_until(lambda: srv.stats.tls_reloads == {"success": 1, "error": 1},
                             what="the refused reload, counted")
            async with tls_client(srv.ports[0], client_context(ca_file)) as c:
                after_bad = peer_names(c)
                assert (await c.request("GET", "/")).status == 200
            stop.set()
            await asyncio.gather(*tasks)
    assert failures == []
    assert set(statuses) == {200}
    assert names == after_bad == ["localhost", "renewed.example"]
    # Reported as a bad config edit is: the file and the reason.
    (refused,) = [r.getMessage() for r in caplog.records if "reload refused" in r.getMessage()]
    assert f"{site.cert}: does not load" in refused, refused


async def test_an_identity_pin_sends_that_client_to_its_version(
        tmp_path: Path, ca: trustme.CA) -> None:
    site = issue(ca, tmp_path, "site", "localhost")
    ca_file = write_ca(ca, tmp_path)
    tester = issue(ca, tmp_path, "tester", "qa.internal", common_name="qa-bot",
                   organization_name="acme", organization_unit_name="qa")
    someone = issue(ca, tmp_path, "someone", "user.internal", common_name="someone")
    async with run_upstream("stable") as stable, run_upstream("canary") as canary:
        cfg = proxy_config(
            [route({"stable": stable.url, "canary": canary.url}, {"stable": 1, "canary": 0},
                   sticky={"pin_header": "X-Splitproxy-Version",
                           "identity_pins": {"CN=qa-bot,OU=qa,O=acme": "canary"}})],
            listen=[tls_listener(site.listener(), client_ca=str(ca_file))])
        async with run_proxy(cfg) as srv:
            served = {}
            for name, cert in (("tester", tester), ("someone", someone)):
                async with tls_client(srv.ports[0], client_context(ca_file, cert)) as c:
                    # A header pin cannot move a pinned identity.
                    resp = await c.request("GET", "/", headers={
                        "X-Splitproxy-Version": "stable"})
                    served[name] = resp.header("x-served-by")
    assert served == {"tester": "canary", "someone": "stable"}


async def test_a_client_that_never_finishes_its_handshake_is_closed(
        tmp_path: Path, ca: trustme.CA) -> None:
    """The handshake counts against timeouts.client_header (asyncio's own default is 60 s)."""
    site = issue(ca, tmp_path, "site", "localhost")
    async with run_upstream("stable") as up:
        cfg = config(up, tls_listener(site.listener()))
        cfg["timeouts"]["client_header"] = "0.3s"
        async with run_proxy(cfg) as srv:
            async with raw_client(srv.ports[0]) as c:
                await c.send(b"\x16\x03\x01")  # the start of a ClientHello, and no more
                assert await c.is_closed(timeout=5)  # not after asyncio's 60 s
