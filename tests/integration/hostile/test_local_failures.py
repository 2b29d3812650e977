"""Threat: the proxy's own resources run out (file descriptors), and the failure is blamed
on a version: its endpoint ejected, its error rate raised, its canary aborted.

Rule: an upstream connect that fails with EMFILE, ENFILE, ENOBUFS, ENOMEM or EADDRNOTAVAIL is
this machine's failure: 503 with Retry-After, a throttled warning in the log, counted in the
proxy's own counters (`local["resource"]`), never in the version's responses, errors or
health. (nginx answers 502 and marks the upstream failed; Envoy counts it as an upstream
connect failure too.)
"""

from __future__ import annotations

import contextlib
import os

import pytest

from tests.support.proxy import proxied, version_errors
from tests.support.rawhttp import raw_client
from tests.support.waiting import wait_until


async def test_out_of_descriptors_is_a_503_of_the_proxy_not_of_the_version(
        caplog: pytest.LogCaptureFixture) -> None:
    async with proxied() as (up, srv):
        async with raw_client(srv.port) as c:
            await wait_until(lambda: len(srv.connections) == 1)
            hog: list[int] = []
            try:
                with contextlib.suppress(OSError):
                    while True:
                        hog.append(os.open("/dev/null", os.O_RDONLY))
                for _ in range(7):  # more than health.consecutive_failures (5)
                    resp = await c.request("GET", "/")
                    assert resp.status == 503, resp.text
                    assert resp.header("retry-after") == "1"
            finally:
                for fd in hog:
                    os.close(fd)
            assert (await c.request("GET", "/")).body == b"stable"  # fds back: served
        stats = srv.stats.get("shop", "stable")
        assert stats.responses == {200: 1}
        assert version_errors(srv) == {}
        assert srv.stats.local["resource"] == 7
        assert [h.up for h in srv.endpoint_health()] == [True]
        assert srv.endpoint_health()[0].failures == 0
    warnings = [r for r in caplog.records if r.name == "splitproxy.local"]
    assert 1 <= len(warnings) < 7  # logged, but not once per request
