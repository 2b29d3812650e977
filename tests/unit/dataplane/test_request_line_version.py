"""The HTTP version read from the request line a packet starts with (`request_line_version`):
never a different answer from the parser's, and "" (ask the parser) whenever it is not plain."""

from __future__ import annotations

import re

import httptools
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splitproxy.dataplane.http.downstream import START_KEPT
from splitproxy.dataplane.http.request import request_line_version
from tests.support.fakeio import FakeServer, config


class _Head:
    """Parser callbacks that keep what `build_exchange` reads at the end of the head."""

    def __init__(self) -> None:
        self.url = b""
        self.method = b""
        self.version: str | None = None
        self.parser = httptools.HttpRequestParser(self)

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_headers_complete(self) -> None:
        self.method = self.parser.get_method()
        self.version = self.parser.get_http_version()


def parsed(packet: bytes) -> _Head | None:
    """The parser's reading of the first request head of `packet` (None: an error, or no
    whole head)."""
    head = _Head()
    try:
        head.parser.feed_data(packet)
    except httptools.HttpParserError:
        return None
    return head if head.version is not None else None


@pytest.mark.parametrize(("packet", "method", "url", "version"), [
    (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", b"GET", b"/", "1.1"),
    (b"POST /x?y=1 HTTP/1.0\r\nContent-Length: 0\r\n\r\n", b"POST", b"/x?y=1", "1.0"),
    (b"GET / HTTP/1.1\r\nHost: a\r\n", b"GET", b"/", "1.1"),  # the head goes on later
    (b"\r\nGET / HTTP/1.0\r\n\r\n", b"GET", b"/", ""),  # an empty line first: ask the parser
    (b"GET / HTTP/1.1", b"GET", b"/", ""),  # the request line itself is cut
    (b"GET /\r\n\r\n", b"GET", b"/", ""),  # HTTP/0.9
    (b"GET / HTTP/2.0\r\n\r\n", b"GET", b"/", ""),
    (b"GET / HTTP/1.2\r\n\r\n", b"GET", b"/", ""),
    (b"GET / HTTP/1.1\n\r\n", b"GET", b"/", ""),  # no CR before the LF
    (b"PUT / HTTP/1.1\r\n\r\n", b"GET", b"/", ""),  # not the method the parser read
    (b"GET  / HTTP/1.1\r\n\r\n", b"GET", b"/", ""),  # two spaces: the version is elsewhere
    (b"GET /a HTTP/1.1\r\n\r\n", b"GET", b"/", ""),  # not the url the parser read
    # A header line that ends like a request line: only the first line is read.
    (b"GET / HTTP/1.0\r\nX: HTTP/1.1\r\n\r\n", b"GET", b"/", "1.0"),
])
def test_examples(packet: bytes, method: bytes, url: bytes, version: str) -> None:
    assert request_line_version(packet, method, url) == version


_TOKEN = st.text("abcXYZ019-/._~%?=&", min_size=1, max_size=12).map(str.encode)
_VERSION = st.sampled_from([b" HTTP/1.1", b" HTTP/1.0", b" HTTP/2.0", b" HTTP/1.2", b"",
                            b" HTTP/1.1 ", b" http/1.1", b"  HTTP/1.0", b" HTTP/1.10"])


@settings(max_examples=400, deadline=None)
@given(st.sampled_from([b"GET", b"POST", b"HEAD", b"OPTIONS"]), _TOKEN, _VERSION,
       st.sampled_from([b"\r\n", b"\n", b"\r\r\n"]), st.sampled_from([b"", b"\r\n", b"\n"]),
       st.sampled_from([b"Host: a\r\n\r\n", b"Host: a\r\n", b"X: HTTP/1.0\r\n\r\n", b""]))
def test_never_disagrees_with_the_parser(method: bytes, target: bytes, version: bytes,
                                         eol: bytes, before: bytes, rest: bytes) -> None:
    packet = before + method + b" /" + target + version + eol + rest
    head = parsed(packet + b"\r\n\r\n")
    if head is not None:
        # What the proxy does: the parser's method and url, the packet's version if plain.
        ours = request_line_version(packet, head.method, head.url)
        assert ours in (head.version, ""), (packet, ours, head.version)
        if head.version in ("1.0", "1.1") and not before and eol == b"\r\n" \
                and version == b" HTTP/" + head.version.encode():
            assert ours == head.version, packet  # the plain case is read, not asked


# -- through the client connection: however the packets cut the requests ------------------------
# An HTTP/1.0 request may lack Host (no route here: 404); an HTTP/1.1 one may not (400). A
# version misread either way shows as the other status.
V10 = b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
V11_NO_HOST = b"GET / HTTP/1.1\r\n\r\n"
V11 = b"GET / HTTP/1.1\r\nHost: other.example\r\n\r\n"


def _answers(packets: list[bytes]) -> list[int]:
    server = FakeServer(config())
    try:
        conn, client = server.connect()
        for packet in packets:
            conn.data_received(packet)
        return [int(status) for status in re.findall(rb"HTTP/1\.1 (\d{3}) ", client.take())]
    finally:
        server.loop.close()


@pytest.mark.parametrize(("packets", "statuses"), [
    pytest.param([V10], [404], id="one-packet"),
    pytest.param([V10[:16], V10[16:]], [404], id="head-cut-after-the-request-line"),
    pytest.param([V10[:12], V10[12:]], [404], id="request-line-cut"),
    pytest.param([V10[:2], V10[2:]], [404], id="method-cut"),
    pytest.param([V11 + V10, V11_NO_HOST], [404, 404, 400], id="pipelined-then-alone"),
    pytest.param([V10 + V11_NO_HOST], [404, 400], id="pipelined-other-way"),
    pytest.param([V10, b"\r\n" + V11_NO_HOST], [404, 400], id="empty-line-first"),
    pytest.param([V11_NO_HOST[:-2], b"\r\n"], [400], id="http11-cut-before-the-end"),
])
def test_every_cut_reads_the_version_the_parser_reads(packets: list[bytes],
                                                       statuses: list[int]) -> None:
    assert _answers(packets) == statuses


def test_no_packet_is_held_that_begins_no_head_or_is_big() -> None:
    """The packet kept for the version (`_start`) is let go when no head began in it (empty
    lines) and when it is bigger than START_KEPT and its head goes on."""
    server = FakeServer(config())
    try:
        conn, _ = server.connect()
        conn.data_received(b"\r\n" * 50_000)
        assert conn._start == b""
        conn.data_received(b"GET / HTTP/1.0\r\nX-Pad: " + b"a" * 2 * START_KEPT)
        assert conn._start == b""  # too big to keep while the head goes on
        conn.data_received(b"\r\n\r\n")
        small, _ = server.connect()
        small.data_received(b"GET / HTTP/1.0\r\n")
        assert small._start == b"GET / HTTP/1.0\r\n"  # kept: the head goes on
        small.data_received(b"\r\n")
        assert small._start == b""
    finally:
        server.loop.close()


# A request and whether it keeps the connection open, for the property below: an HTTP/1.0
# request lacks Host here (404, kept open by its keep-alive), an HTTP/1.1 one has another
# host's (404) or none (400, and the connection ends).
_REQUESTS = {
    b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n": 404,
    b"GET /a HTTP/1.1\r\nHost: other.example\r\n\r\n": 404,
    b"GET /b HTTP/1.1\r\n\r\n": 400,
    b"\r\nGET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n": 404,
    b"HEAD /c?x=1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n": 404,
}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(sorted(_REQUESTS)), min_size=1, max_size=4), st.data())
def test_any_cut_of_any_requests_is_answered_as_the_versions_say(
        requests: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(requests)
    cuts = sorted(data.draw(st.sets(st.integers(1, len(stream) - 1), max_size=6)))
    packets = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    expected = []
    for request in requests:
        expected.append(_REQUESTS[request])
        if expected[-1] == 400:
            break  # a refused request ends the connection
    assert _answers(packets) == expected
