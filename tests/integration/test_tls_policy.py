"""TLS listeners reloaded in a whole splitproxy: a certificate file that changes into one that
does not load is reported as a bad config edit is (in /status, `splitproxy status` and the
metrics, with the file and the reason) while the old certificate serves, and cleared when a
good file arrives; a config edit of the listener's TLS policy (versions, ciphers, client
certificates) applies to the next connections, without a restart. Real `ssl` clients,
certificates made by trustme."""

from __future__ import annotations

import asyncio
import os
import ssl
import warnings
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme

from splitproxy.cli.render import render
from splitproxy.control.service import Service
from splitproxy.control.status import Status
from tests.support.configs import proxy_config, route
from tests.support.ports import free_port
from tests.support.service import (
    admin,
    generation,
    metric,
    running_service,
    scrape,
    status,
    write_config,
)
from tests.support.tls import CertFiles, client_context, issue, peer_names, tls_client, write_ca
from tests.support.upstream import run_upstream
from tests.support.waiting import wait_until

# trustme's keys are ECDSA P-256: these are TLS 1.2 suites such a certificate can serve.
AES128 = "ECDHE-ECDSA-AES128-GCM-SHA256"
AES256 = "ECDHE-ECDSA-AES256-GCM-SHA384"
REFUSED = (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)


def tls_config(upstream: str, port: int, cert: CertFiles, **tls: Any) -> dict[str, Any]:
    return proxy_config([route({"stable": upstream})], listen=[
        {"address": f"127.0.0.1:{port}",
         "tls": {"certificates": [cert.listener()], "reload_interval": "0.05s", **tls}}])


def client(ca_file: Path, *, version: ssl.TLSVersion | None = None, cipher: str | None = None,
           cert: CertFiles | None = None) -> ssl.SSLContext:
    ctx = client_context(ca_file, cert)
    if version is not None:
        ctx.minimum_version = ctx.maximum_version = version
    if cipher is not None:
        ctx.set_ciphers(cipher)
    return ctx


async def answers(port: int, ctx: ssl.SSLContext) -> bool:
    """Whether a new connection with `ctx` is served (False: the handshake was refused)."""
    try:
        async with tls_client(port, ctx) as c:
            return (await c.request("GET", "/")).status == 200
    except REFUSED:
        return False


def put(dst: Path, src: Path) -> None:
    """Replace a file atomically, as a certificate manager does (no half-written file)."""
    tmp = dst.with_suffix(".tmp")
    tmp.write_bytes(src.read_bytes())
    os.replace(tmp, dst)


async def refused_now(session: aiohttp.ClientSession) -> list[dict[str, Any]]:
    body = await status(session)
    found: list[dict[str, Any]] = body["config"]["certificates_refused"]
    return found


async def test_a_certificate_file_that_does_not_load_is_reported_until_a_good_one_arrives(
        tmp_path: Path) -> None:
    ca = trustme.CA()
    site = issue(ca, tmp_path, "site", "localhost")
    renewed = issue(ca, tmp_path, "renewed", "localhost", "renewed.example")
    ca_file = write_ca(ca, tmp_path)
    port = free_port()
    listener = f"127.0.0.1:{port}"
    async with run_upstream("stable") as up:
        cfg = tls_config(up.url, port, site)
        async with running_service(tmp_path, cfg) as (svc, _), admin(svc) as session:
            assert await refused_now(session) == []
            good_key = site.key.read_bytes()
            put(site.key, renewed.key)  # the key of another certificate: no pair
            await wait_until(lambda: bool(svc.controller.status().config.certificates_refused),
                             what="the refused reload in /status")
            (shown,) = await refused_now(session)
            body = await status(session)
            samples = await scrape(session)
            text = render(Status.model_validate(body))
            # The old certificate serves on.
            async with tls_client(port, client_context(ca_file)) as c:
                served_meanwhile = peer_names(c)
                assert (await c.request("GET", "/")).status == 200
            put(site.cert, renewed.cert)  # the key's own certificate: a good pair again
            await wait_until(lambda: not svc.controller.status().config.certificates_refused,
                             what="the refusal cleared")
            cleared = await status(session)
            samples_after = await scrape(session)
            async with tls_client(port, client_context(ca_file)) as c:
                served_after = peer_names(c)
    assert good_key != renewed.key.read_bytes()
    assert shown["listener"] == listener
    assert str(site.cert) in shown["error"] and "does not load" in shown["error"], shown
    assert body["config"]["certificate_reloads"]["error"] >= 1
    assert body["config"]["last_reload"]["result"] is None  # the config itself is fine
    assert f"certificates of {listener} REFUSED" in text and str(site.cert) in text, text
    assert metric(samples, "splitproxy_tls_certificates_refused", listener=listener) == 1
    assert (metric(samples, "splitproxy_tls_certificate_reloads_total", result="error")
            or 0) >= 1
    assert served_meanwhile == ["localhost"]
    assert cleared["config"]["certificates_refused"] == []
    assert cleared["config"]["certificate_reloads"]["success"] >= 1
    assert metric(samples_after, "splitproxy_tls_certificates_refused", listener=listener) == 0
    assert served_after == ["localhost", "renewed.example"]


async def test_with_workers_the_refusal_is_reported_once_per_listener(tmp_path: Path) -> None:
    ca = trustme.CA()
    site = issue(ca, tmp_path, "site", "localhost")
    port = free_port()
    async with run_upstream("stable") as up:
        async with running_service(tmp_path, tls_config(up.url, port, site), watch=False,
                                   workers=2, start_wait=60, stop_wait=60) as (svc, _):
            site.cert.write_text("not a certificate")

            def both_refused() -> bool:
                return svc.controller.status().config.certificate_reloads.get("error") == 2

            await wait_until(both_refused, 10, "both workers' refusals")
            shown = svc.controller.status().config.certificates_refused
    assert [(c.listener, str(site.cert) in c.error) for c in shown] == [
        (f"127.0.0.1:{port}", True)]


async def tls_reload(svc: Service, path: Path, cfg: dict[str, Any]) -> None:
    before = generation(svc)
    write_config(path, cfg)
    await wait_until(lambda: generation(svc) == before + 1, what="the reload")
    assert svc.controller.status().config.restart_needed == []


async def test_a_policy_edit_applies_to_new_connections_without_a_restart(
        tmp_path: Path) -> None:
    ca = trustme.CA()
    site = issue(ca, tmp_path, "site", "localhost")
    ca_file = write_ca(ca, tmp_path)
    tls12 = client(ca_file, version=ssl.TLSVersion.TLSv1_2)
    port = free_port()
    async with run_upstream("stable") as up:
        cfg = tls_config(up.url, port, site)
        async with running_service(tmp_path, cfg) as (svc, path):
            assert await answers(port, tls12)
            async with tls_client(port, tls12) as kept:  # open across the reloads
                await tls_reload(svc, path, tls_config(up.url, port, site, min_version="1.3"))
                tls12_after = await answers(port, tls12)
                tls13_after = await answers(port, client(ca_file))
                kept_after = (await kept.request("GET", "/")).status
            await tls_reload(svc, path, tls_config(up.url, port, site, ciphers=AES128))
            ciphers = {c: await answers(port, client(ca_file, version=ssl.TLSVersion.TLSv1_2,
                                                     cipher=c)) for c in (AES128, AES256)}
            await tls_reload(svc, path, tls_config(up.url, port, site))
            back = await answers(port, client(ca_file, version=ssl.TLSVersion.TLSv1_2,
                                              cipher=AES256))
    assert (tls12_after, tls13_after, kept_after) == (False, True, 200)
    assert ciphers == {AES128: True, AES256: False}
    assert back


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_client_certificate_settings_apply_on_reload(
        tmp_path: Path, version: ssl.TLSVersion) -> None:
    """mTLS turned on, its CA replaced, then turned off, by config edits: each new handshake
    is judged by the settings of the moment (verification mode and CA store both)."""
    ca = trustme.CA()
    site = issue(ca, tmp_path, "site", "localhost")
    ca_file = write_ca(ca, tmp_path)
    first_ca, second_ca = trustme.CA(), trustme.CA()
    first_file = write_ca(first_ca, tmp_path, "first-ca.pem")
    second_file = write_ca(second_ca, tmp_path, "second-ca.pem")
    first = issue(first_ca, tmp_path, "first", "client.internal", common_name="first")
    second = issue(second_ca, tmp_path, "second", "client.internal", common_name="second")
    port = free_port()

    async def served() -> dict[str, bool]:
        return {name: await answers(port, client(ca_file, version=version, cert=cert))
                for name, cert in (("none", None), ("first", first), ("second", second))}

    async with run_upstream("stable") as up:
        cfg = tls_config(up.url, port, site)
        async with running_service(tmp_path, cfg) as (svc, path):
            plain = await served()
            await tls_reload(svc, path, tls_config(up.url, port, site,
                                                   client_ca=str(first_file)))
            on_first = await served()
            await tls_reload(svc, path, tls_config(up.url, port, site,
                                                   client_ca=str(second_file)))
            on_second = await served()
            await tls_reload(svc, path, tls_config(up.url, port, site))
            off = await served()
    everyone = {"none": True, "first": True, "second": True}
    assert plain == everyone
    assert on_first == {"none": False, "first": True, "second": False}
    assert on_second == {"none": False, "first": False, "second": True}
    assert off == everyone


async def test_the_default_policy_refuses_tls_1_1_and_cbc_suites(tmp_path: Path) -> None:
    """TLS 1.2+ and, for 1.2, ECDHE with AEAD only (Mozilla intermediate)."""
    ca = trustme.CA()
    site = issue(ca, tmp_path, "site", "localhost")
    ca_file = write_ca(ca, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # an old client, on purpose
        tls11 = client(ca_file, version=ssl.TLSVersion.TLSv1_1, cipher="DEFAULT:@SECLEVEL=0")
    cbc = client(ca_file, version=ssl.TLSVersion.TLSv1_2, cipher="ECDHE-ECDSA-AES128-SHA256")
    port = free_port()
    async with run_upstream("stable") as up:
        async with running_service(tmp_path, tls_config(up.url, port, site), watch=False):
            served = {name: await answers(port, ctx) for name, ctx in (
                ("1.1", tls11), ("1.2 cbc", cbc),
                ("1.2 gcm", client(ca_file, version=ssl.TLSVersion.TLSv1_2, cipher=AES128)),
                ("1.3", client(ca_file, version=ssl.TLSVersion.TLSv1_3)))}
    assert served == {"1.1": False, "1.2 cbc": False, "1.2 gcm": True, "1.3": True}
