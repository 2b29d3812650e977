"""Real HTTP/2 clients: curl by prior knowledge (h2c) and curl over TLS, where ALPN chooses h2
on the same listener that serves HTTP/1.1; the `ssl` module's view of the ALPN choice."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import trustme

from tests.support.configs import proxy_config, route
from tests.support.h2client import h2_client
from tests.support.processes import require_binary
from tests.support.proxy import proxied, run_proxy
from tests.support.rawhttp import get
from tests.support.tls import client_context, issue, tls_client, write_ca
from tests.support.upstream import run_upstream, run_upstreams
from tests.support.waiting import WAIT


async def curl(*args: str) -> tuple[int, str, str]:
    """curl with -sS -w '%{http_version} %{http_code}': (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        require_binary("curl"), "-sS", "-w", "\n%{http_version} %{http_code}", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), WAIT)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_curl_http2_prior_knowledge_is_routed_and_counted() -> None:
    async with run_upstreams("stable", "canary") as ups:
        cfg = proxy_config([route({n: u.url for n, u in ups.items()},
                                  {"stable": 50, "canary": 50})])
        async with run_proxy(cfg) as srv:
            url = f"http://127.0.0.1:{srv.port}/"
            # Two curls (curl 7.88 fails to reuse an h2c prior-knowledge connection for a
            # second URL, against nginx as well): the second goes to the other version.
            code, out, err = await curl("--http2-prior-knowledge", url)
            code2, out2, err2 = await curl("--http2-prior-knowledge", url)
            plain = await get(srv.port, "/")  # HTTP/1.1 on the same port still works
    assert code == 0 and code2 == 0, err + err2
    lines = (out + "\n" + out2).splitlines()
    assert lines.count("2 200") == 2, out
    assert sorted(line for line in lines if line in ("stable", "canary")) == [
        "canary", "stable"], out
    assert plain.status == 200
    total = sum(srv.stats.get("shop", v).responses.get(200, 0) for v in ("stable", "canary"))
    assert total == 3


async def test_curl_http2_prior_knowledge_posts_a_body() -> None:
    async with proxied() as (up, srv):
        code, out, err = await curl("--http2-prior-knowledge", "--data-binary", "x" * 100_000,
                                    f"http://127.0.0.1:{srv.port}/sha256")
    assert code == 0, err
    body, status = out.rsplit("\n", 1)
    assert status == "2 200"
    assert json.loads(body)["size"] == 100_000


async def test_curl_over_tls_negotiates_h2_by_alpn(tmp_path: Path) -> None:
    ca = trustme.CA()
    site = issue(ca, tmp_path, "site", "localhost")
    ca_file = write_ca(ca, tmp_path)
    async with run_upstream("stable") as up:
        cfg = proxy_config([route({"stable": up.url})], listen=[
            {"address": "127.0.0.1:0", "tls": {"certificates": [site.listener()]}}])
        async with run_proxy(cfg) as srv:
            url = f"https://localhost:{srv.port}/headers"
            resolve = f"localhost:{srv.port}:127.0.0.1"
            code, out, err = await curl("--http2", "--cacert", str(ca_file),
                                        "--resolve", resolve, url)
            code11, out11, err11 = await curl("--http1.1", "--cacert", str(ca_file),
                                              "--resolve", resolve, url)
            async with h2_client(srv.port, client_context(ca_file, alpn=("h2", "http/1.1"))) \
                    as client:
                alpn = client.writer.get_extra_info("ssl_object").selected_alpn_protocol()
                resp = await client.get("/headers")
            async with tls_client(srv.port, client_context(ca_file)) as c11:
                alpn11 = c11.writer.get_extra_info("ssl_object").selected_alpn_protocol()
    assert code == 0, err
    body, status = out.rsplit("\n", 1)
    assert status == "2 200"
    names = {k.lower(): v for k, v in json.loads(body)["headers"]}
    assert names["x-forwarded-proto"] == "https"
    assert code11 == 0 and out11.rsplit("\n", 1)[1] == "1.1 200", err11
    assert alpn == "h2" and resp.status == 200
    assert alpn11 == "http/1.1"
    assert srv.stats.get("shop", "stable").responses == {200: 3}
