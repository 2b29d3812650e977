"""headers.py and response.py: the rules both directions share, and the response head the
client gets. Table-driven, no sockets."""

from __future__ import annotations

from typing import Any

import pytest

from splitproxy.dataplane.http.headers import connection_tokens, cookie_value, error_response
from splitproxy.dataplane.http.response import (
    CHUNKED,
    DISCARD,
    RAW,
    BadResponse,
    final_head,
    read_response,
)

Headers = list[tuple[bytes, bytes]]


def h(*lines: str) -> Headers:
    return [(name.encode(), value.encode()) for name, _, value in
            (line.partition(": ") for line in lines)]


# -- headers.py -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "names"),
    [
        (b"close", set()),
        (b"keep-alive, Upgrade", set()),
        (b"X-Secret, x-other ,,", {b"x-secret", b"x-other"}),
        # never nominated: the framing, Host and the forwarding headers the proxy writes
        (b"Host, Content-Length, Transfer-Encoding, X-Forwarded-For, X-Forwarded-Proto, "
         b"X-Forwarded-Host, X-Real", {b"x-real"}),
    ],
)
def test_connection_tokens(value: bytes, names: set[bytes]) -> None:
    assert connection_tokens(value) == names


@pytest.mark.parametrize(
    ("header", "name", "value"),
    [
        (b"sp=canary.3", b"sp", b"canary.3"),
        (b"a=1; sp=\"stable.2\"; b=2", b"sp", b"stable.2"),
        (b"a=1;sp=x", b"sp", b"x"),
        (b"spx=1; xsp=2", b"sp", None),
        (b"sp", b"sp", None),
        (b"", b"sp", None),
    ],
)
def test_cookie_value(header: bytes, name: bytes, value: bytes | None) -> None:
    assert cookie_value(header, name) == value


@pytest.mark.parametrize(
    ("status", "close", "retry_after", "lines"),
    [
        (404, False, None, []),
        (400, True, None, [b"Connection: close"]),
        (503, True, 1, [b"Retry-After: 1", b"Connection: close"]),
    ],
)
def test_error_response(status: int, close: bool, retry_after: int | None,
                        lines: list[bytes]) -> None:
    response = error_response(status, "why", close, retry_after)
    head, _, body = response.partition(b"\r\n\r\n")
    first, *rest = head.split(b"\r\n")
    assert first.startswith(b"HTTP/1.1 %d " % status)
    assert rest == [b"Content-Type: text/plain; charset=utf-8",
                    b"Content-Length: %d" % len(body), b"X-Splitproxy-Error: 1", *lines]
    assert body.endswith(b": why\n")


# -- response.py ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("headers", "kept", "chunked", "length"),
    [
        (h("Content-Type: text/plain", "Content-Length: 2"), [b"Content-Type: text/plain"],
         False, b"2"),
        (h("Transfer-Encoding: chunked", "X-A: 1"), [b"X-A: 1"], True, None),
        (h("Transfer-Encoding: gzip"), [], None, None),
        (h("Connection: keep-alive", "Keep-Alive: timeout=5", "X-A: 1"), [b"X-A: 1"], False,
         None),
        (h("Connection: X-Secret", "X-Secret: 1", "X-A: 1"), [b"X-A: 1"], False, None),
        (h("Upgrade: h2c", "Trailer: X", "TE: t", "Proxy-Connection: x"), [], False, None),
    ],
    ids=["length", "chunked", "gzip", "keep-alive", "named", "hop-by-hop"],
)
def test_read_response(headers: Headers, kept: list[bytes], chunked: bool | None,
                       length: bytes | None) -> None:
    assert read_response(headers) == (kept, chunked, length)


# One row: what the upstream answered and how, to whom -> the head the client gets (after the
# status line), the body's framing towards the client, unframed, and whether it closes.
FINAL_HEADS = [
    pytest.param(200, h("Content-Length: 2"), {}, [b"Content-Length: 2"], RAW, False, False,
                 id="length"),
    pytest.param(200, h("Transfer-Encoding: chunked"), {},
                 [b"Transfer-Encoding: chunked"], CHUNKED, False, False, id="chunked"),
    pytest.param(200, h("X-A: 1"), {}, [b"X-A: 1", b"Transfer-Encoding: chunked"], CHUNKED,
                 True, False, id="unframed-to-11-rechunked"),
    pytest.param(200, h("X-A: 1"), {"client_11": False},
                 [b"X-A: 1", b"Connection: close"], RAW, True, True, id="unframed-to-10-closes"),
    pytest.param(200, h("Transfer-Encoding: chunked"), {"client_11": False},
                 [b"Connection: close"], RAW, False, True, id="chunked-to-10-closes"),
    pytest.param(200, h("Content-Length: 2"), {"client_11": False},
                 [b"Content-Length: 2", b"Connection: keep-alive"], RAW, False, False,
                 id="length-to-10-keep-alive"),
    pytest.param(200, h("Content-Length: 2"), {"close": True},
                 [b"Content-Length: 2", b"Connection: close"], RAW, False, True, id="close"),
    pytest.param(200, h("Content-Length: 2"), {"draining": True},
                 [b"Content-Length: 2", b"Connection: close"], RAW, False, True,
                 id="draining-closes"),
    pytest.param(200, h("Content-Length: 5"), {"method_head": True},
                 [b"Content-Length: 5"], DISCARD, False, False, id="head-keeps-length"),
    pytest.param(204, h("Content-Length: 0"), {}, [], RAW, False, False, id="204-no-framing"),
    pytest.param(304, h("Content-Length: 9", "ETag: x"), {}, [b"ETag: x"], RAW, False, False,
                 id="304-no-framing"),
    pytest.param(200, h("Content-Length: 2"), {"set_cookie": b"Set-Cookie: sp=canary.1"},
                 [b"Content-Length: 2", b"Set-Cookie: sp=canary.1"], RAW, False, False,
                 id="sticky-cookie-last"),
    pytest.param(101, h("Connection: Upgrade", "Upgrade: websocket", "Sec-WebSocket-Accept: k"),
                 {"upgrade": True, "draining": True},
                 [b"Sec-WebSocket-Accept: k", b"Connection: Upgrade", b"Upgrade: websocket"],
                 RAW, False, False, id="101-keeps-upgrade-headers"),
]


@pytest.mark.parametrize(
    ("status", "headers", "how", "lines", "mode", "unframed", "close"), FINAL_HEADS)
def test_final_head(status: int, headers: Headers, how: dict[str, Any], lines: list[bytes],
                    mode: int, unframed: bool, close: bool) -> None:
    args: dict[str, Any] = {"method_head": False, "client_11": True, "upgrade": False,
                               "close": False, "draining": False, "set_cookie": None, **how}
    head, got_mode, got_unframed, got_close = final_head(status, b"Reason", headers, **args)
    status_line, *got_lines = head.removesuffix(b"\r\n\r\n").split(b"\r\n")
    assert status_line == b"HTTP/1.1 %d Reason" % status
    assert (got_lines, got_mode, got_unframed, got_close) == (lines, mode, unframed, close)


@pytest.mark.parametrize(
    ("status", "headers", "upgrade", "method_head", "detail"),
    [
        (101, h("Upgrade: websocket"), False, False, "switched protocols without being asked"),
        (101, h("Connection: upgrade"), True, False, "101 without an Upgrade header"),
        (200, h("Transfer-Encoding: gzip"), False, False, "transfer coding other than chunked"),
    ],
)
def test_responses_never_passed_on(status: int, headers: Headers, upgrade: bool,
                                   method_head: bool, detail: str) -> None:
    with pytest.raises(BadResponse, match=detail):
        final_head(status, b"R", headers, method_head, True, upgrade, False, False, None)


def test_a_gzip_coded_answer_to_head_passes_it_has_no_body() -> None:
    head, mode, _, _ = final_head(200, b"OK", h("Transfer-Encoding: gzip"), True, True, False,
                                  False, False, None)
    assert mode == DISCARD and head == b"HTTP/1.1 200 OK\r\n\r\n"
