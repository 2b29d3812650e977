"""An HTTP/2 request header block, checked (`dataplane.h2.request`): what becomes the HTTP/1.1
head and what is refused as malformed; and the flood counters (`dataplane.h2.limits`)."""

from __future__ import annotations

import pytest

from splitproxy.dataplane.h2 import limits
from splitproxy.dataplane.h2.request import Malformed, read_request

BASE = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"shop.example"),
        (b":path", b"/a?b=1")]


def test_a_request_becomes_an_http11_header_list_with_host_first() -> None:
    req = read_request([*BASE, (b"cookie", b"a=1"), (b"x-a", b"1"), (b"cookie", b"b=2"),
                        (b"te", b"trailers")], end_stream=True)
    assert (req.method, req.path) == (b"GET", b"/a?b=1")
    assert req.headers == [(b"host", b"shop.example"), (b"x-a", b"1"),
                           (b"cookie", b"a=1; b=2")]
    assert req.content_length is None and not req.grpc


def test_a_body_without_length_goes_chunked_and_with_one_keeps_it() -> None:
    chunked = read_request([*BASE], end_stream=False)
    sized = read_request([*BASE, (b"content-length", b"5")], end_stream=False)
    assert (b"transfer-encoding", b"chunked") in chunked.headers
    assert (b"content-length", b"5") in sized.headers and sized.content_length == 5
    assert all(n != b"transfer-encoding" for n, _ in sized.headers)


def test_grpc_is_told_by_its_content_type() -> None:
    assert read_request([*BASE, (b"content-type", b"application/grpc+proto")], False).grpc


def test_host_stands_in_for_a_missing_authority() -> None:
    block = [(n, v) for n, v in BASE if n != b":authority"] + [(b"host", b"h.example")]
    assert read_request(block, True).headers[0] == (b"host", b"h.example")


@pytest.mark.parametrize("block", [
    [*BASE, (b"x-a", b"1\r\nx-b: 2")],
    [*BASE, (b"x-a", b"\x00")],
    [*BASE, (b"X-A", b"1")],
    [*BASE, (b"x a", b"1")],
    [*BASE, (b"", b"1")],
    [*BASE, (b"connection", b"close")],
    [*BASE, (b"keep-alive", b"1")],
    [*BASE, (b"proxy-connection", b"1")],
    [*BASE, (b"transfer-encoding", b"chunked")],
    [*BASE, (b"upgrade", b"h2c")],
    [*BASE, (b"te", b"gzip")],
    [*BASE, (b":protocol", b"websocket")],
    [*BASE, (b":path", b"/again")],
    [BASE[0], (b"x-a", b"1"), *BASE[1:]],
    [(n, v) for n, v in BASE if n != b":method"],
    [(n, v) for n, v in BASE if n != b":path"],
    [(n, v) for n, v in BASE if n != b":scheme"],
    [(n, v) for n, v in BASE if n != b":authority"],
    [*BASE, (b"host", b"other.example")],
    [*BASE, (b"content-length", b"1"), (b"content-length", b"2")],
    [*BASE, (b"content-length", b"x")],
    [(b":method", b"CONNECT"), (b":authority", b"h:443")],
    [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"h"), (b":path", b"a")],
    [(b":method", b"G T"), (b":scheme", b"http"), (b":authority", b"h"), (b":path", b"/")],
], ids=lambda b: repr(b[-1]))
def test_malformed_blocks_are_refused(block: list[tuple[bytes, bytes]]) -> None:
    with pytest.raises(Malformed):
        read_request(block, end_stream=True)


def test_a_declared_body_on_a_stream_already_ended_is_refused() -> None:
    with pytest.raises(Malformed):
        read_request([*BASE, (b"content-length", b"3")], end_stream=True)


def test_flood_counter_trips_each_limit_and_resets_with_its_window() -> None:
    counter = limits.FloodCounter(0.0)
    counter.pings = limits.MAX_PINGS + 1
    assert counter.over() == "PING flood"
    counter.tick(limits.FLOOD_WINDOW)
    assert counter.over() is None
    counter.settings = limits.MAX_SETTINGS + 1
    assert counter.over() == "SETTINGS flood"
    counter.tick(2 * limits.FLOOD_WINDOW)
    counter.resets, counter.opened = limits.MIN_RESETS + 1, 3 * limits.MIN_RESETS
    assert counter.over() is None  # a third of the streams cancelled: a client's right
    counter.opened = limits.MIN_RESETS + 1
    assert counter.over() == "rapid reset"


def test_grpc_web_is_not_grpc() -> None:
    assert not read_request([*BASE, (b"content-type", b"application/grpc-web")], False).grpc
