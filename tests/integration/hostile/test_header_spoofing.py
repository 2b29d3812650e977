"""Threat: a client that forges a header the proxy owns by spelling it with `_` for `-`.
CGI, WSGI (wsgiref, gunicorn before 22) and Rack turn both spellings into one variable
(`HTTP_X_CLIENT_CERT_SUBJECT`), so `X_Client_Cert_Subject: CN=admin` would reach such an
upstream as the client identity the proxy vouches for, `X_Forwarded_For` as the client address.

Rule: a request header whose name, with `_` read as `-`, is one the proxy writes or decides
on (Host, the framing and hop-by-hop headers, X-Forwarded-*, X-Request-Id, X-Client-Cert-
Subject, Expect) is dropped. Other names with `_` pass. nginx 1.22 (measured) drops every
header whose name has a `_` (`underscores_in_headers off`); Envoy and HAProxy pass them all.
"""

from __future__ import annotations

from tests.support.configs import proxy_config, route
from tests.support.proxy import run_proxy
from tests.support.rawhttp import raw_client
from tests.support.rawupstream import recording_upstream


async def test_underscore_spellings_of_the_proxys_headers_are_dropped() -> None:
    async with recording_upstream() as rec:
        async with run_proxy(proxy_config([route({"stable": rec.url})])) as srv:
            async with raw_client(srv.port) as c:
                resp = await c.request("GET", "/", [
                    ("X_Client_Cert_Subject", "CN=admin"), ("X_Forwarded_For", "6.6.6.6"),
                    ("x_forwarded_proto", "https"), ("Content_Length", "5"),
                    ("Transfer_Encoding", "chunked"), ("X_Request_Id", "forged"),
                    ("My_Header", "kept")])
                assert resp.status == 200
    names = [k for k, _ in rec.requests[0].headers]
    assert [k for k in names if "_" in k] == ["My_Header"]
    assert rec.requests[0].header("x-forwarded-for") == "127.0.0.1"
    assert rec.requests[0].header("x-forwarded-proto") == "http"
    assert rec.requests[0].header("x-request-id") != "forged"
