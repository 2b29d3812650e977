"""request.py: the request head read once, and the head sent upstream. Table-driven, no
sockets."""

from __future__ import annotations

import pytest

from splitproxy.dataplane.http import request
from splitproxy.dataplane.http.request import (
    Reject,
    absolute_target,
    body_refusal,
    host_key,
    read_head,
    upstream_head,
)

Headers = list[tuple[bytes, bytes]]


def h(*lines: str) -> Headers:
    """`"Name: value"` lines -> the (name, value) pairs the parser hands over."""
    return [(name.encode(), value.encode()) for name, _, value in
            (line.partition(": ") for line in lines)]


@pytest.mark.parametrize(
    ("headers", "client_11", "detail"),
    [
        (h("Host: a", "Host: b"), True, "more than one Host header"),
        (h("Host:  "), True, "empty Host header"),
        (h("Accept: */*"), True, "HTTP/1.1 request without Host header"),
        (h("Host: a", "Transfer-Encoding: gzip"), True, "unsupported or repeated"),
        (h("Host: a", "Transfer-Encoding: chunked", "Transfer-Encoding: chunked"), True,
         "unsupported or repeated"),
        (h("Host: a", "Transfer-Encoding: chunked"), False, "Transfer-Encoding in an HTTP 1.0"),
        (h("Host: a/../b"), True, "invalid Host header"),
        (h("Host: a b"), True, "invalid Host header"),
        (h("Host: a@b"), True, "invalid Host header"),
        (h("Host: a\\b"), True, "invalid Host header"),
    ],
    ids=["two-hosts", "empty-host", "no-host-11", "gzip", "chunked-twice", "te-in-http10",
         "host-path", "host-space", "host-userinfo", "host-backslash"],
)
def test_ambiguous_or_incomplete_heads_are_refused_with_400(
        headers: Headers, client_11: bool, detail: str) -> None:
    with pytest.raises(Reject) as caught:
        read_head(headers, client_11)
    assert caught.value.status == 400
    assert detail in caught.value.detail


@pytest.mark.parametrize("host", ["shop.example", "shop.example:8080", "[::1]:80", "10.0.0.1",
                                  "xn--bcher-kva.example", "a_b.example.", "%41.example"])
def test_hosts_of_every_legal_shape_are_accepted(host: str) -> None:
    assert read_head(h(f"Host: {host}"), client_11=True).host == host.encode()


def test_a_host_found_valid_once_is_still_checked_the_same_way_after() -> None:
    # Valid hosts are remembered (the check is the costly part of a head); a bad one never is.
    for _ in range(2):
        assert read_head(h("Host: cached.example"), client_11=True).host == b"cached.example"
        with pytest.raises(Reject, match="invalid Host header"):
            read_head(h("Host: cached.example/x"), client_11=True)
    assert b"cached.example" in request._VALID_HOSTS
    assert b"cached.example/x" not in request._VALID_HOSTS


def test_the_remembered_hosts_stay_bounded_in_count_and_length() -> None:
    for n in range(3 * request._MAX_VALID_HOSTS):
        read_head(h(f"Host: h{n}.example"), client_11=True)
        assert len(request._VALID_HOSTS) <= request._MAX_VALID_HOSTS
    long = "a" * (request._MAX_CACHED_HOST + 1)
    assert read_head(h(f"Host: {long}"), client_11=True).host == long.encode()
    assert long.encode() not in request._VALID_HOSTS


def test_an_http10_request_may_come_without_host() -> None:
    assert read_head(h("Accept: */*"), client_11=False).host is None


@pytest.mark.parametrize(
    ("headers", "forwarded"),
    [
        (h("Host: a", "Accept: */*"), [b"Host: a", b"Accept: */*"]),
        # hop-by-hop headers are never forwarded
        (h("Host: a", "Keep-Alive: 5", "Proxy-Connection: x", "TE: trailers", "Trailer: X"),
         [b"Host: a"]),
        # framing is written from what the parser read, never copied
        (h("Host: a", "Content-Length: 3"), [b"Host: a"]),
        (h("Host: a", "Transfer-Encoding: chunked"), [b"Host: a"]),
        # a header the Connection header names goes too; Host and framing cannot be named
        (h("Host: a", "Connection: x-secret, host, content-length", "X-Secret: 1", "X-Keep: 2"),
         [b"Host: a", b"X-Keep: 2"]),
        # a header the proxy owns, spelt with `_` (read as `-` by CGI/WSGI), is dropped
        (h("Host: a", "X_Client_Cert_Subject: CN=x", "x_forwarded_for: 1", "Content_Length: 5",
           "My_Header: 1"), [b"Host: a", b"My_Header: 1"]),
        # forwarding headers the client sent are kept (X-Forwarded-For is extended later)
        (h("Host: a", "X-Forwarded-Proto: https", "X-Forwarded-Host: b", "X-Forwarded-For: 1"),
         [b"Host: a", b"X-Forwarded-Proto: https", b"X-Forwarded-Host: b"]),
    ],
    ids=["plain", "hop-by-hop", "content-length", "chunked", "connection-named", "underscores",
         "forwarding"],
)
def test_the_lines_forwarded(headers: Headers, forwarded: list[bytes]) -> None:
    assert read_head(headers, client_11=True).lines == forwarded


@pytest.mark.parametrize(
    ("headers", "has_body"),
    [
        (h("Host: a"), False),
        (h("Host: a", "Content-Length: 0"), False),
        (h("Host: a", "Content-Length: 5"), True),
        (h("Host: a", "Transfer-Encoding: chunked"), True),
    ],
)
def test_has_body(headers: Headers, has_body: bool) -> None:
    assert read_head(headers, client_11=True).has_body is has_body


def test_seen_holds_the_last_value_by_lower_case_name() -> None:
    head = read_head(h("Host: a", "X-User-Id: 1", "x-user-id: 2"), client_11=True)
    assert head.seen[b"x-user-id"] == b"2"


@pytest.mark.parametrize(
    ("headers", "client_ip", "upgrade", "expected"),
    [
        (h("Host: a"), b"10.0.0.1", False,
         [b"Host: a", b"X-Forwarded-For: 10.0.0.1", b"X-Forwarded-Proto: http",
          b"X-Forwarded-Host: a"]),
        (h("Host: a", "X-Forwarded-For: 1.1.1.1", "X-Forwarded-For: 2.2.2.2"), b"10.0.0.1",
         False, [b"Host: a", b"X-Forwarded-For: 1.1.1.1, 2.2.2.2, 10.0.0.1",
                 b"X-Forwarded-Proto: http", b"X-Forwarded-Host: a"]),
        (h("Host: a", "X-Forwarded-Proto: https", "X-Forwarded-Host: b"), b"10.0.0.1", False,
         [b"Host: a", b"X-Forwarded-Proto: https", b"X-Forwarded-Host: b",
          b"X-Forwarded-For: 10.0.0.1"]),
        (h("Host: a", "Content-Length: 3"), b"10.0.0.1", False,
         [b"Host: a", b"X-Forwarded-For: 10.0.0.1", b"X-Forwarded-Proto: http",
          b"X-Forwarded-Host: a", b"Content-Length: 3"]),
        (h("Host: a", "Transfer-Encoding: chunked"), b"10.0.0.1", False,
         [b"Host: a", b"X-Forwarded-For: 10.0.0.1", b"X-Forwarded-Proto: http",
          b"X-Forwarded-Host: a", b"Transfer-Encoding: chunked"]),
        (h("Host: a", "Connection: Upgrade", "Upgrade: websocket"), b"10.0.0.1", True,
         [b"Host: a", b"Connection: upgrade", b"Upgrade: websocket",
          b"X-Forwarded-For: 10.0.0.1", b"X-Forwarded-Proto: http", b"X-Forwarded-Host: a"]),
        # an Upgrade header without an upgrade (the parser said no) is not forwarded
        (h("Host: a", "Upgrade: websocket"), b"10.0.0.1", False,
         [b"Host: a", b"X-Forwarded-For: 10.0.0.1", b"X-Forwarded-Proto: http",
          b"X-Forwarded-Host: a"]),
    ],
    ids=["plain", "xff-extended", "xfp-xfh-kept", "content-length", "chunked", "upgrade",
         "upgrade-header-only"],
)
def test_the_head_sent_upstream(headers: Headers, client_ip: bytes, upgrade: bool,
                                expected: list[bytes]) -> None:
    head = read_head(headers, client_11=True)
    sent = upstream_head(b"GET", b"/p?q=1", head, client_ip, upgrade)
    assert sent == b"GET /p?q=1 HTTP/1.1\r\n" + b"\r\n".join(expected) + b"\r\n\r\n"


@pytest.mark.parametrize(
    ("host", "key"),
    [
        (None, ""),
        (b"Shop.Example", "shop.example"),
        (b"shop.example:8080", "shop.example"),
        (b"[::1]:80", "[::1]"),
        (b"[FE80::1]", "[fe80::1]"),
        (b"Shop.Example.", "shop.example"),  # the same name, fully qualified
        (b"shop.example.:80", "shop.example"),
    ],
)
def test_host_key(host: bytes | None, key: str) -> None:
    assert host_key(host) == key


@pytest.mark.parametrize(
    ("url", "target"),
    [
        (b"http://shop.example/a?b", b"/a?b"),
        (b"http://shop.example", b"/"),
        (b"http://shop.example?q=1", b"/?q=1"),
        (b"https://SHOP.example:8443/x", b"/x"),  # port and case aside, the same host
        (b"http://shop.example./x", b"/x"),
    ],
)
def test_absolute_form_naming_the_host_becomes_origin_form(url: bytes, target: bytes) -> None:
    head = read_head(h("Host: shop.example"), client_11=True)
    assert absolute_target(url, head, b"GET") == target
    assert head.host == b"shop.example" and head.lines == [b"Host: shop.example"]


def test_absolute_form_without_host_gives_the_host() -> None:
    head = read_head(h("Accept: */*"), client_11=False)
    assert absolute_target(b"http://shop.example:81/x", head, b"GET") == b"/x"
    assert head.host == b"shop.example:81"
    assert head.lines == [b"Host: shop.example:81", b"Accept: */*"]


@pytest.mark.parametrize(
    ("url", "method", "detail"),
    [
        (b"http://other.example/x", b"GET", "another host than the Host header"),
        (b"http://shop.example@other.example/x", b"GET", "invalid authority"),
        (b"http:///x", b"GET", "invalid authority"),
        (b"weird", b"GET", "neither a path nor an absolute URL"),
        (b"*", b"GET", "for OPTIONS only"),
    ],
)
def test_targets_that_disagree_with_host_or_have_no_meaning_are_400(
        url: bytes, method: bytes, detail: str) -> None:
    head = read_head(h("Host: shop.example"), client_11=True)
    with pytest.raises(Reject) as caught:
        absolute_target(url, head, method)
    assert caught.value.status == 400 and detail in caught.value.detail


def test_asterisk_is_the_target_of_options() -> None:
    head = read_head(h("Host: shop.example"), client_11=True)
    assert absolute_target(b"*", head, b"OPTIONS") == b"*"


@pytest.mark.parametrize(
    ("expect", "content_length", "max_body", "refusal"),
    [
        (None, None, None, None),
        (b"100-continue", b"10", None, None),
        (b" 100-Continue ", None, None, None),
        (b"200-ok", None, None, (417, "only 'Expect: 100-continue' is supported")),
        (None, b"10", 10, None),
        (None, b"11", 10, (413, "request body larger than 10 bytes")),
        (b"100-continue", b"11", 10, (413, "request body larger than 10 bytes")),
        (b"200-ok", b"11", 10, (417, "only 'Expect: 100-continue' is supported")),
    ],
)
def test_body_refusal(expect: bytes | None, content_length: bytes | None, max_body: int | None,
                      refusal: tuple[int, str] | None) -> None:
    assert body_refusal(expect, content_length, max_body) == refusal


@pytest.mark.parametrize("name", ["X-Splitproxy-Shadow", "x-splitproxy-shadow"])
def test_a_client_sent_shadow_marker_is_never_forwarded_nor_routed_on(name: str) -> None:
    head = read_head(h("Host: a", f"{name}: 1", "Accept: */*"), True)
    assert head.lines == [b"Host: a", b"Accept: */*"]
    assert b"x-splitproxy-shadow" not in head.seen
    sent = upstream_head(b"GET", b"/", head, b"10.0.0.1", False)
    assert b"shadow" not in sent.lower()
