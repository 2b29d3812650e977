"""dispatch.py: the rules that turn request headers into a named version (pin, preview,
sticky cookie). Table-driven, no sockets."""

from __future__ import annotations

from typing import Any

import pytest

from splitproxy.config.models import Config
from splitproxy.dataplane.http.dispatch import pinned, sticky
from splitproxy.dataplane.http.runtime import CompiledRoute
from splitproxy.routing import table
from splitproxy.routing.table import RouteEntry
from tests.support.fakeio import FakeServer

VERSIONS = {"blue": {"endpoints": ["http://127.0.0.1:9001"]},
            "green": {"endpoints": ["http://127.0.0.1:9002"]}}


def entry(**route: Any) -> RouteEntry:
    config = Config.model_validate({"routes": [{"name": "shop", "versions": VERSIONS, **route}]})
    return table.build(config, runs={"shop": "r7"}).routes[0]


CANARY = {"weights": {"blue": 90, "green": 10}}
PIN = {**CANARY, "sticky": {"pin_header": "X-Version"}}
TOKEN = "s3cret-t0ken-0123456789"
PIN_TOKEN = {**CANARY, "sticky": {"pin_header": "X-Version", "pin_token": TOKEN}}
BLUE_GREEN = {"strategy": "blue-green", "active": "blue", "preview_header": "X-Preview"}
BLUE_GREEN_TOKEN = {**BLUE_GREEN, "sticky": {"pin_token": TOKEN}}


@pytest.mark.parametrize(
    ("route", "seen", "version"),
    [
        (CANARY, {b"x-version": b"green"}, None),  # no pin header configured: ignored
        (PIN, {}, None),
        (PIN, {b"x-version": b"green"}, "green"),
        (PIN, {b"x-version": b" green "}, "green"),
        (PIN, {b"x-version": b"purple"}, None),
        (PIN_TOKEN, {b"x-version": b"green"}, None),
        (PIN_TOKEN, {b"x-version": b"green:wrong"}, None),
        (PIN_TOKEN, {b"x-version": b"green:s3cret-t0ken-0123456789"}, "green"),
        (BLUE_GREEN, {b"x-preview": b"1"}, "green"),  # the color not serving
        (BLUE_GREEN, {}, None),
        (BLUE_GREEN_TOKEN, {b"x-preview": b"1"}, None),
        (BLUE_GREEN_TOKEN, {b"x-preview": b" s3cret-t0ken-0123456789"}, "green"),
    ],
    ids=["unconfigured", "absent", "pinned", "spaces", "unknown", "token-missing",
         "token-wrong", "token", "preview", "no-preview", "preview-token-missing",
         "preview-token"],
)
def test_pinned(route: dict[str, Any], seen: dict[bytes, bytes], version: str | None) -> None:
    assert pinned(entry(**route), seen) == version


def compiled(**route: Any) -> CompiledRoute:
    server = FakeServer({"routes": [{"name": "shop", "versions": VERSIONS, **route}]},
                        runs={"shop": "r7"})
    server.loop.close()  # only the compiled route is used
    return server.state.runtime.routes[0]


STICKY = {**CANARY, "sticky": {"cookie": "sp"}}


@pytest.mark.parametrize(
    ("seen", "version"),
    [
        ({}, None),
        ({b"cookie": b"sp=green.r7"}, "green"),
        ({b"cookie": b"a=1; sp=\"blue.r7\""}, "blue"),
        ({b"cookie": b"sp=green.r6"}, None),  # another run's cookie is ignored
        ({b"cookie": b"sp=purple.r7"}, None),
        ({b"cookie": b"other=green.r7"}, None),
    ],
)
def test_sticky(seen: dict[bytes, bytes], version: str | None) -> None:
    assert sticky(compiled(**STICKY), seen) == version


def test_set_cookie_lines_name_the_version_and_the_run() -> None:
    route = compiled(**STICKY)
    assert route.set_cookie["green"] == (
        b"Set-Cookie: sp=green.r7; Path=/; Max-Age=86400; HttpOnly; SameSite=Lax")
