"""A response head, read once: which header lines pass on (hop-by-hop and `Connection`-named
ones removed, never the framing), how the body is framed towards the client, whether the
client connection closes after it, and the head written to the client. Pure functions; no
sockets."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from splitproxy.dataplane.http.headers import HOP_BY_HOP, connection_tokens

# Never passed on: hop-by-hop headers, and the upstream's X-Request-Id (the proxy writes the
# request's own, the one it sent upstream and logged; an upstream that echoes it would
# otherwise make two).
_NOT_PASSED: Final = HOP_BY_HOP | {b"x-request-id"}

# How the response body is framed towards the client.
RAW: Final = 0  # as it comes: a Content-Length body, or an HTTP/1.0 client reading up to the close
# CHUNKED: re-chunked for an HTTP/1.1 client (the parser de-chunks what the upstream sent)
CHUNKED: Final = 1
DISCARD: Final = 2  # none may follow (an answer to HEAD): bytes that come anyway are dropped


class BadResponse(Exception):
    """A response the proxy does not pass on: the client gets a 502, the version a protocol
    error."""


def read_response(
    headers: list[tuple[bytes, bytes]],
) -> tuple[list[bytes], bool | None, bytes | None]:
    """One pass over a response's headers: the lines to pass on (hop-by-hop ones and those
    the Connection header names removed), chunked (None: a coding we cannot pass on) and
    Content-Length."""
    out = []
    named: set[bytes] | None = None
    chunked: bool | None = False
    length: bytes | None = None
    for name, value in headers:
        lname = name.lower()
        if lname in _NOT_PASSED:
            if lname == b"transfer-encoding":
                chunked = True if value.strip().lower() == b"chunked" else None
            elif lname == b"connection" and value.lower() not in _PLAIN_CONNECTION:
                named = (named or set()) | connection_tokens(value)
            continue
        if lname == b"content-length":
            length = value.strip()
            continue
        out.append(name + b": " + value)
    if named:
        out = [line for line in out if line.split(b":", 1)[0].lower() not in named]
    return out, chunked, length


# The usual Connection values, which name no header to remove: skip parsing them.
_PLAIN_CONNECTION: Final = frozenset({b"keep-alive", b"close", b"upgrade"})


def final_head(
    status: int, reason: bytes, headers: list[tuple[bytes, bytes]], method_head: bool,
    client_11: bool, upgrade: bool, close: bool, draining: bool, set_cookie: bytes | None,
    request_id: bytes = b"",
) -> tuple[bytes, int, bool, bool]:
    """The rules for a final response (any but 1xx, or a 101 to an upgrade request).

    `close`: the client connection closes after this answer, as known so far; `upgrade`: the
    request asked to switch protocols; `request_id`: the request's X-Request-Id, returned to
    the client (the upstream's own is never passed on). Returns the head to write, the
    framing of the body towards the client (RAW, CHUNKED or DISCARD), whether that body ends
    only when the upstream closes (unframed), and whether the client connection closes after
    the answer.
    Raises `BadResponse` for a response that must not reach the client.
    """
    if status == 101:
        # A switch nobody asked for, or one that does not say to what (RFC 9110 15.2.2:
        # a 101 must carry Upgrade), is never passed on nor pooled.
        if not upgrade:
            raise BadResponse("upstream switched protocols without being asked")
        if not any(name.lower() == b"upgrade" for name, _ in headers):
            raise BadResponse("upstream sent 101 without an Upgrade header")
    kept, chunked, content_length = read_response(headers)
    extra: list[bytes] = []
    mode = RAW
    unframed = False
    if status == 101:
        # The upgrade headers are hop-by-hop but are the point of this response.
        extra.extend(
            name + b": " + value for name, value in headers
            if name.lower() in (b"upgrade", b"connection")
        )
    elif not (method_head or status == 204 or status == 304):  # a body may follow
        if chunked is None:
            raise BadResponse("upstream used a transfer coding other than chunked")
        if content_length is not None and not chunked:
            extra.append(b"Content-Length: " + content_length)
        elif client_11:
            unframed = not chunked
            mode = CHUNKED
            extra.append(b"Transfer-Encoding: chunked")
        else:
            unframed = not chunked
            # An HTTP/1.0 client learns where an unframed body ends from the close.
            close = True
    elif method_head:
        if content_length is not None:
            extra.append(b"Content-Length: " + content_length)
        # The parser cannot know a HEAD answer has no body; the exchange ends after the
        # packet with the head. Body bytes that come anyway are dropped and the connection
        # is not reused.
        mode = DISCARD
    if status != 101:
        if draining:
            close = True
        if close:
            extra.append(b"Connection: close")
        elif not client_11:
            extra.append(b"Connection: keep-alive")
    if set_cookie is not None:
        extra.append(set_cookie)
    if request_id:
        extra.append(b"X-Request-Id: " + request_id)
    return head_bytes(status, reason, kept, extra), mode, unframed, close


def head_bytes(status: int, reason: bytes, lines: list[bytes], extra: Iterable[bytes]) -> bytes:
    first = _STATUS_LINES.get((status, reason))
    if first is None:
        # `b"%d" % status` and a concatenation: 1,500 instructions a head (callgrind).
        first = b"HTTP/1.1 %d " % status + reason
        if len(_STATUS_LINES) < _MAX_STATUS_LINES:
            _STATUS_LINES[status, reason] = first
    # The two empty items end the head with its blank line: no copy of it to append one.
    return b"\r\n".join([first, *lines, *extra, b"", b""])


# Status lines seen, by (status, reason): an upstream uses a handful.
_STATUS_LINES: Final[dict[tuple[int, bytes], bytes]] = {}
_MAX_STATUS_LINES: Final = 256
