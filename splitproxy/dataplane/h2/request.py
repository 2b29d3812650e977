"""An HTTP/2 request's header block, checked once and turned into what the HTTP/1.1 machinery
reads (`dispatch.build_exchange`): method, target and header lines with a Host.

The `h2` library's own header validation is off (it makes every malformed request a
connection error, which would cut the client's other streams); these checks make it a stream
error (RST_STREAM PROTOCOL_ERROR, RFC 9113 8.1.1) instead, and they are the ones that stop
HTTP/2-to-HTTP/1.1 downgrade smuggling: nothing with CR, LF or NUL, no upper-case or
non-token name, no pseudo-header out of place, no connection-specific header, reaches the
HTTP/1.1 head written upstream. Pure functions; no sockets.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# RFC 9110 5.6.2 token characters, lower case only (RFC 9113 8.2.1: upper case is malformed).
_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+")
_BAD_VALUE = re.compile(rb"[\x00\r\n]")
_PSEUDO = frozenset({b":method", b":scheme", b":path", b":authority"})
# RFC 9113 8.2.2: connection-specific fields are malformed in HTTP/2 (`te` but "trailers").
_CONNECTION = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"})


class Malformed(Exception):
    """A malformed request: the stream is reset with PROTOCOL_ERROR, nothing is forwarded."""


@dataclass(slots=True)
class H2Request:
    method: bytes
    path: bytes
    # Regular header fields in order, `host` first (from :authority), cookies joined into one
    # field as HTTP/1.1 requires (RFC 9113 8.2.3).
    headers: list[tuple[bytes, bytes]]
    content_length: int | None
    grpc: bool  # content-type application/grpc*: errors are answered the gRPC way


def read_request(block: list[tuple[bytes, bytes]], end_stream: bool) -> H2Request:
    """Check one request header block (raises `Malformed`). `end_stream`: the block ended the
    stream (no body follows); a body without a content-length goes upstream chunked."""
    pseudo: dict[bytes, bytes] = {}
    headers: list[tuple[bytes, bytes]] = [(b"host", b"")]
    cookies: list[bytes] = []
    host: bytes | None = None
    length: int | None = None
    grpc = False
    regular = False
    for name, value in block:
        if _BAD_VALUE.search(value) is not None:
            raise Malformed(f"CR, LF or NUL in the value of {name!r}")
        if name[:1] == b":":
            if regular:
                raise Malformed(f"pseudo-header {name!r} after a regular header")
            if name not in _PSEUDO:
                raise Malformed(f"unknown pseudo-header {name!r}")
            if name in pseudo:
                raise Malformed(f"pseudo-header {name!r} twice")
            pseudo[name] = value
            continue
        regular = True
        if _NAME.fullmatch(name) is None:
            raise Malformed(f"header name {name!r} is not a lower-case token")
        if name in _CONNECTION:
            raise Malformed(f"connection-specific header {name!r} in HTTP/2")
        if name == b"te":
            if value.strip().lower() != b"trailers":
                raise Malformed("te other than 'trailers' in HTTP/2")
            continue  # hop-by-hop: a gRPC upstream over HTTP/2 gets its own
        if name == b"cookie":
            cookies.append(value)
            continue
        if name == b"host":
            if host is not None:
                raise Malformed("more than one host header")
            host = value
            continue
        if name == b"content-length":
            if not value.isdigit() or (length is not None and int(value) != length):
                raise Malformed(f"invalid content-length {value!r}")
            length = int(value)
            continue
        if name == b"content-type":
            ct = value.lower()
            # gRPC, not gRPC-Web (whose trailers travel in the body): as `grpc.is_grpc`.
            grpc = ct == b"application/grpc" or ct.startswith((b"application/grpc+",
                                                               b"application/grpc;"))
        headers.append((name, value))
    method = pseudo.get(b":method")
    path = pseudo.get(b":path")
    if method is None:
        raise Malformed("no :method")
    if method == b"CONNECT":
        raise Malformed("CONNECT is not supported by a reverse proxy")
    if not path or b":scheme" not in pseudo:
        raise Malformed("no :path or :scheme")
    if path[:1] != b"/" and not (path == b"*" and method == b"OPTIONS"):
        raise Malformed(f"invalid :path {path!r}")
    if _NAME.fullmatch(method.lower()) is None:
        raise Malformed(f"invalid :method {method!r}")
    authority = pseudo.get(b":authority", host)
    if not authority:
        raise Malformed("no :authority nor host")
    if host is not None and host != authority:
        raise Malformed("host disagrees with :authority")
    headers[0] = (b"host", authority)
    if cookies:
        headers.append((b"cookie", b"; ".join(cookies)))
    if length is not None:
        if end_stream and length:
            raise Malformed("content-length disagrees with the body (none)")
        headers.append((b"content-length", b"%d" % length))
    elif not end_stream:
        # The body's length is known only at its end: chunked towards an HTTP/1.1 upstream.
        headers.append((b"transfer-encoding", b"chunked"))
    return H2Request(method, path, headers, length, grpc)


def read_trailers(block: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Check a request's trailer block (raises `Malformed`): the header rules above, and no
    pseudo-header nor a field that frames or routes the message (RFC 9110 6.5.1)."""
    fields = []
    for name, value in block:
        if _BAD_VALUE.search(value) is not None:
            raise Malformed(f"CR, LF or NUL in the value of trailer {name!r}")
        if name[:1] == b":":
            raise Malformed(f"pseudo-header {name!r} in trailers")
        if _NAME.fullmatch(name) is None:
            raise Malformed(f"trailer name {name!r} is not a lower-case token")
        if name in _CONNECTION or name in _NOT_TRAILERS:
            raise Malformed(f"{name!r} is not allowed in trailers")
        fields.append((name, value))
    return fields


# Fields that frame, route or authenticate a message: never taken from trailers.
_NOT_TRAILERS = frozenset({b"te", b"host", b"content-length", b"content-type", b"trailer",
                           b"authorization", b"cookie"})
