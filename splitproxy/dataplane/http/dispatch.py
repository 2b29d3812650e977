"""From a parsed request head to the exchange that answers it: the method and framing checks,
the normalised target, the route, the version (pin, cookie, hash, weight) and the head sent
upstream. Called once per request by the downstream protocol."""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING

from splitproxy.config.paths import BadTarget, needs_normalising, normalise_target
from splitproxy.dataplane.http.exchange import Exchange
from splitproxy.dataplane.http.headers import cookie_value, error_response
from splitproxy.dataplane.http.lifecycle import RequestContext
from splitproxy.dataplane.http.listener import CLIENT_CERT_HEADER, redirect_response
from splitproxy.dataplane.http.mirror import mirrored
from splitproxy.dataplane.http.request import (
    Reject,
    absolute_target,
    body_refusal,
    host_key,
    read_head,
    request_line_version,
    upstream_head,
)
from splitproxy.dataplane.http.requestid import resolve as request_id
from splitproxy.dataplane.http.runtime import CompiledRoute
from splitproxy.routing.choose import choose
from splitproxy.routing.steer import steered
from splitproxy.routing.table import RouteEntry

if TYPE_CHECKING:
    from splitproxy.dataplane.http.peer import Downstream, RequestFacts
    from splitproxy.dataplane.http.runtime import VersionRuntime


def build_exchange(down: Downstream, parser: RequestFacts,
                   headers: list[tuple[bytes, bytes]], url: bytes,
                   start: bytes = b"") -> Exchange:
    """A parsed request head -> the exchange that answers it: framing and method checks,
    the normalised target, the route and the version (raises `Reject`). `start`: the packet
    the head began at the start of (b"": unknown), which shows its HTTP version."""
    state = down.state
    now = state.clock()
    method = parser.get_method()
    http_version = request_line_version(start, method, url) if start else ""
    if not http_version:
        http_version = parser.get_http_version()
    client_11 = http_version == "1.1"
    if not client_11 and http_version != "1.0" and http_version != "0.9":
        # llhttp reads "HTTP/2.0" (a prior-knowledge h2 client) like 1.x (nginx: 505).
        raise Reject(505, f"HTTP/{http_version} is not served here: HTTP/1.1 only")
    keep_alive = parser.should_keep_alive()
    if method == b"CONNECT" or method == b"TRACE":
        # TRACE would echo the request, cookies and credentials included (nginx: 405).
        raise Reject(405, f"{method.decode('latin-1')} is not supported by a reverse proxy")
    head = read_head(headers, client_11)
    rid = head.request_id = request_id(head.request_id)
    seen = head.seen
    target = url if url[:1] == b"/" else absolute_target(url, head, method)
    if needs_normalising(target):
        try:
            target = normalise_target(target)
        except BadTarget as exc:
            raise Reject(400, str(exc)) from None
    listener = down.listener
    if listener.redirect_port is not None:
        close = head.has_body or not keep_alive
        return Exchange(down, None, RequestContext(
            start_time=now, client_11=client_11, keep_alive=not close, has_body=head.has_body),
            local=redirect_response(head.host, target, listener.redirect_port, close))
    identity = down.identity
    if identity is not None:
        seen[CLIENT_CERT_HEADER] = identity  # routing may hash or pin on it
    runtime = state.runtime
    route = runtime.catch_all
    if route is None:
        path = target.split(b"?", 1)[0].decode("latin-1")
        route = runtime.match("" if runtime.any_host else host_key(head.host), path)
    has_body = head.has_body
    if route is None:
        state.stats.bad_requests += 1
        return _local(down, 404, "no route matches this request", client_11, keep_alive, now,
                      has_body, rid)

    entry = route.entry
    plan = entry.plan
    pin_name = pinned(entry, seen) \
        if entry.pin_header is not None or entry.preview_header is not None else None
    if identity is not None and entry.identity_pins:
        # A verified identity outranks a header anyone can send.
        pin_name = entry.identity_pins.get(identity, pin_name)
    cookie_name = sticky(route, seen) if route.cookie is not None else None
    hash_key = seen.get(entry.hash_header) if entry.hash_header is not None else None
    steer = steered(entry.steer_rules, seen) if entry.steer_rules else False
    chosen = choose(plan, next(entry.counter), pin_name, cookie_name, hash_key, steer)
    if chosen is None:
        return _local(down, 503, f"route {entry.name} has no version with weight > 0",
                      client_11, keep_alive, now, has_body, rid)
    version = route.versions[chosen]
    set_cookie = None
    if route.cookie is not None and cookie_name != chosen and pin_name != chosen \
            and not steer:
        # Earned now: the client keeps this version. A header route earns nothing: without
        # its header the client is placed as everyone else.
        set_cookie = route.set_cookie[chosen]

    limits = state.limits
    expect, cl = head.expect, head.content_length
    if expect is not None or cl is not None:
        refused = body_refusal(expect, cl, limits.max_body)
        if refused is not None:
            return Exchange(down, version, RequestContext(
                start_time=now, client_11=client_11, keep_alive=False, has_body=has_body,
                request_id=rid), local=error_response(*refused, True, request_id=rid))

    # llhttp flags an upgrade only for a request with an Upgrade header (CONNECT: 405 above).
    upgrade = b"upgrade" in seen and parser.should_upgrade()
    if upgrade and has_body:
        # llhttp treats every byte after an upgrade request's head as the new protocol's:
        # a body could not be told apart from it, so such a request is refused.
        raise Reject(400, "an Upgrade request must not carry a body")
    upgrade = upgrade and head.upgrade is not None  # not when only h2c was asked (ignored)
    # Positional, in field order: calling a class with keyword arguments builds a dict
    # (measured with callgrind: 12 keywords cost 5,000 more instructions than 12 positions,
    # 4% of a whole proxied request).
    request = RequestContext(
        upstream_head(method, target, head, down.client_ip, upgrade, listener.scheme,
                      identity),  # head
        now,  # start_time
        client_11,  # client_11
        keep_alive,  # keep_alive
        method == b"HEAD",  # method_head
        has_body,  # has_body
        head.chunked,  # chunked
        upgrade,  # upgrade
        expect is not None and client_11,  # continue_100
        limits.body_buffer if has_body and (cl is None or int(cl) <= limits.body_buffer)
        else 0,  # body_buffer
        set_cookie,  # set_cookie
        entry.synthetic_header is not None and entry.synthetic_header in seen,  # synthetic
        rid,  # request_id
    )
    if route.mirror is not None:
        return mirrored(route.mirror, down, version, request, method, cl)
    if version.h2:
        return _bridged(down, version, request)
    return Exchange(down, version, request)


def _bridged(down: Downstream, version: VersionRuntime,
             request: RequestContext) -> Exchange:
    """A request to a version that speaks HTTP/2 only: over its HTTP/2 pool."""
    bridge = down.state.bridge
    if bridge is None:  # a server without HTTP/2 upstreams (never in `ProxyServer`)
        return Exchange(down, version, request, local=error_response(
            502, "upstream error", not request.keep_alive, request_id=request.request_id))
    return bridge(down, version, request)


def _local(down: Downstream, status: int, detail: str, client_11: bool,
           keep_alive: bool, now: float, has_body: bool, rid: bytes) -> Exchange:
    # With a body pending that nobody will read, the connection cannot be reused.
    close = has_body or not keep_alive
    return Exchange(down, None, RequestContext(
        start_time=now, client_11=client_11, keep_alive=not close, has_body=has_body,
        request_id=rid), local=error_response(status, detail, close, request_id=rid))


def pinned(entry: RouteEntry, seen: dict[bytes, bytes]) -> str | None:
    """The version a request names itself: by the pin header (opt-in; one of `entry.pins`)
    or, on a blue-green route, by the preview header (with the token, when one is set),
    which reaches the color not serving."""
    pin = seen.get(entry.pin_header) if entry.pin_header is not None else None
    name = entry.pins.get(pin.strip()) if pin is not None else None
    if entry.preview_header is not None:
        preview = seen.get(entry.preview_header)
        if preview is not None and (entry.preview_token is None or hmac.compare_digest(
                preview.strip(), entry.preview_token)):
            name = entry.preview_version
    return name


def sticky(route: CompiledRoute, seen: dict[bytes, bytes]) -> str | None:
    """The version the route's sticky cookie names, if the cookie is of the current run."""
    raw = seen.get(b"cookie")
    if raw is None or route.cookie is None:
        return None
    value = cookie_value(raw, route.cookie)
    return route.sticky.get(value) if value is not None else None
