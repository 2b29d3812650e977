"""Threat: a request target that names one path and is routed as another.

Rule: routes match the normalised path (unreserved escapes decoded, `.`/`..` removed, repeated
slashes merged) and the upstream receives that normalised path, so the upstream serves the path
the route was chosen for. A target that climbs above the root, or a malformed escape, is 400.

nginx 1.22 (measured, `location /api` and `location /web`): `/web/../api`, `/web/%2e%2e/api`,
`//api`, `/./api` all reach the /api location, `/%77eb` the /web one, `/../api` is 400; nginx
forwards the target *as received* (`proxy_pass` without a URI), which leaves an upstream that
does not normalise free to read it differently; splitproxy forwards the normal form instead
(as Envoy does with `normalize_path` and `merge_slashes`). nginx also decodes `%2F` to `/` for
matching; splitproxy keeps an encoded slash a character, never a separator.
"""

from __future__ import annotations

import pytest

from tests.support.configs import proxy_config, route
from tests.support.proxy import run_proxy
from tests.support.rawhttp import assert_error, raw_client
from tests.support.upstream import run_upstream


@pytest.mark.parametrize(("target", "version", "forwarded"), [
    ("/web/../api", "api", "/api"),
    ("/web/%2e%2e/api", "api", "/api"),
    ("/web/%2E%2E/api/x?q=/../y", "api", "/api/x?q=/../y"),
    ("/%77eb", "web", "/web"),
    ("//api", "api", "/api"),
    ("/./api", "api", "/api"),
    ("/api//v1/./x", "api", "/api/v1/x"),
    ("/web%2f..%2fapi", "web", "/web%2F..%2Fapi"),
    ("/api", "api", "/api"),
])
async def test_routes_match_and_forward_the_normalised_path(
        target: str, version: str, forwarded: str) -> None:
    async with run_upstream("api") as api, run_upstream("web") as web:
        cfg = proxy_config([
            route({"api": api.url}, name="api", match={"path_prefix": "/api"}),
            route({"web": web.url}, name="web", match={"path_prefix": "/web"}),
            route({"web": web.url}, name="other"),
        ])
        async with run_proxy(cfg) as srv:
            async with raw_client(srv.port) as c:
                resp = await c.request("GET", target)
    assert resp.status == 200
    assert resp.header("x-served-by") == version
    assert resp.header("x-path") == forwarded


@pytest.mark.parametrize("target", ["/../api", "/web/../../api", "/%zz", "/a%2", "/api/%00"])
async def test_ambiguous_targets_are_refused(target: str) -> None:
    """nginx 1.22 (measured): `/../api` and `/api/%00` are 400 too (a NUL cuts a path short
    in C code behind the upstream)."""
    async with run_upstream("api") as api:
        async with run_proxy(proxy_config([route({"api": api.url})])) as srv:
            async with raw_client(srv.port) as c:
                assert_error(await c.request("GET", target), 400)
    assert api.requests == 0
