"""From a parsed request head to the exchange that answers it: the method and framing checks,
the normalised target, the route, the version (pin, cookie, hash, weight) and the head sent
upstream. Called once per request by the downstream protocol."""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING

import httptools

from splitproxy.config.paths import BadTarget, needs_normalising, normalise_target
from splitproxy.dataplane.http.exchange import Exchange
from splitproxy.dataplane.http.headers import cookie_value, error_response
from splitproxy.dataplane.http.request import (
    Reject,
    host_key,
    origin_form,
    read_head,
    upstream_head,
)
from splitproxy.dataplane.http.requestid import resolve as request_id
from splitproxy.routing.choose import choose

if TYPE_CHECKING:
    from splitproxy.dataplane.http.downstream import DownstreamProtocol


def build_exchange(down: DownstreamProtocol, parser: httptools.HttpRequestParser,
                   headers: list[tuple[bytes, bytes]], url: bytes) -> Exchange:
    """A parsed request head -> the exchange that answers it: framing and method checks,
    the normalised target, the route and the version (raises `Reject`)."""
    server = down.server
    now = down.loop.time()
    method = parser.get_method()
    client_11 = parser.get_http_version() == "1.1"
    keep_alive = parser.should_keep_alive()
    if method == b"CONNECT" or method == b"TRACE":
        # TRACE would echo the request, cookies and credentials included (nginx: 405).
        raise Reject(405, f"{method.decode('latin-1')} is not supported by a reverse proxy")
    head = read_head(headers, client_11)
    rid = head.request_id = request_id(head.request_id)
    seen = head.seen
    target = origin_form(url)
    if needs_normalising(target):
        try:
            target = normalise_target(target)
        except BadTarget as exc:
            raise Reject(400, str(exc)) from None
    runtime = server.runtime
    route = runtime.catch_all
    if route is None:
        path = target.split(b"?", 1)[0].decode("latin-1")
        route = runtime.match("" if runtime.any_host else host_key(head.host), path)
    has_body = head.has_body
    if route is None:
        server.stats.bad_requests += 1
        return _local(down, 404, "no route matches this request", client_11, keep_alive, now,
                      has_body, rid)

    entry = route.entry
    plan = entry.plan
    pin = seen.get(entry.pin_header) if entry.pin_header is not None else None
    pin_name = entry.pins.get(pin.strip()) if pin is not None else None
    if entry.preview_header is not None:
        preview = seen.get(entry.preview_header)
        if preview is not None and (entry.preview_token is None or hmac.compare_digest(
                preview.strip(), entry.preview_token)):
            pin_name = entry.preview_version  # blue-green preview: the color not serving
    cookie_name: str | None = None
    if route.cookie is not None:
        raw = seen.get(b"cookie")
        if raw is not None:
            sticky = cookie_value(raw, route.cookie)  # of the current run only
            cookie_name = route.sticky.get(sticky) if sticky is not None else None
    hash_key = seen.get(entry.hash_header) if entry.hash_header is not None else None
    chosen = choose(plan, next(entry.counter), pin_name, cookie_name, hash_key)
    if chosen is None:
        return _local(down, 503, f"route {entry.name} has no version with weight > 0",
                      client_11, keep_alive, now, has_body, rid)
    version = route.versions[chosen]
    set_cookie = None
    if route.cookie is not None and cookie_name != chosen and pin_name != chosen:
        set_cookie = route.set_cookie[chosen]

    local: bytes | None = None
    limits = server.limits
    expect, cl = head.expect, head.content_length
    if expect is not None and expect.strip().lower() != b"100-continue":
        local = error_response(417, "only 'Expect: 100-continue' is supported", True,
                               request_id=rid)
    elif limits.max_body is not None and cl is not None and int(cl) > limits.max_body:
        local = error_response(413, f"request body larger than {limits.max_body} bytes",
                               True, request_id=rid)
    if local is not None:
        return Exchange(down, version, b"", client_11=client_11, client_keep_alive=False,
                        local=local, start_time=now, has_body=has_body, request_id=rid)

    upgrade = parser.should_upgrade() and head.upgrade is not None
    if upgrade and has_body:
        # llhttp treats every byte after an upgrade request's head as the new protocol's:
        # a body could not be told apart from it, so such a request is refused.
        raise Reject(400, "an Upgrade request must not carry a body")
    ex = Exchange(
        down, version, upstream_head(method, target, head, down.client_ip, upgrade),
        method_head=method == b"HEAD",
        client_11=client_11,
        client_keep_alive=keep_alive,
        chunked_request=head.chunked,
        has_body=has_body,
        upgrade=upgrade,
        set_cookie=set_cookie,
        start_time=now,
        synthetic=entry.synthetic_header is not None and entry.synthetic_header in seen,
        request_id=rid,
    )
    ex.continue_100 = expect is not None and client_11
    if has_body and (cl is None or int(cl) <= limits.body_buffer):
        ex.body_buffer = limits.body_buffer
    return ex


def _local(down: DownstreamProtocol, status: int, detail: str, client_11: bool,
           keep_alive: bool, now: float, has_body: bool, rid: bytes) -> Exchange:
    # With a body pending that nobody will read, the connection cannot be reused.
    close = has_body or not keep_alive
    return Exchange(down, None, b"", client_11=client_11, client_keep_alive=not close,
                    local=error_response(status, detail, close, request_id=rid),
                    start_time=now, has_body=has_body, request_id=rid)
