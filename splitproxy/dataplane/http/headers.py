"""Header rules shared by both directions: hop-by-hop removal and the proxy's own responses."""

from __future__ import annotations

from http import HTTPStatus
from typing import Final

# RFC 9110 7.6.1: meaningful for one connection only, never forwarded. Headers named in a
# `Connection` header are removed as well (see `connection_tokens`).
HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)

# Connection tokens that are options, not header names to strip.
_CONNECTION_OPTIONS: Final = frozenset({b"close", b"keep-alive", b"upgrade"})

# Headers a `Connection` token may never remove, in either direction: the message's framing,
# its Host, and the forwarding headers the proxy writes or extends itself. RFC 9110 7.6.1 says
# a sender must not nominate end-to-end fields; a message that does anyway is passed on with
# the same framing and Host it was read with (the token is ignored, as nginx ignores every
# Connection token), so the next hop can never read the body differently than we did.
NEVER_NOMINATED: Final = frozenset(
    {
        b"host",
        b"content-length",
        b"transfer-encoding",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
    }
)

CONTINUE_100: Final = b"HTTP/1.1 100 Continue\r\n\r\n"

# Marks a shadow copy (`mirror`) for the service it reaches. Only the proxy says so: a client's
# own is removed from every request it sends (`request.read_head`), so no client can make its
# request look like shadow traffic that a service may treat differently (no side effects, no
# billing), nor send a copy a second marker.
SHADOW_MARKER: Final = b"x-splitproxy-shadow"


def connection_tokens(value: bytes) -> set[bytes]:
    """Header names a `Connection` header removes: its tokens, less the options it always
    carries and less the headers no token may remove (`NEVER_NOMINATED`)."""
    tokens = {t for t in (p.strip().lower() for p in value.split(b",")) if t}
    return tokens - _CONNECTION_OPTIONS - NEVER_NOMINATED


def error_response(status: int, detail: str, close: bool, retry_after: int | None = None,
                   request_id: bytes = b"") -> bytes:
    """A complete short text/plain response made by the proxy itself."""
    phrase = HTTPStatus(status).phrase
    body = f"{status} {phrase}: {detail}\n".encode("latin-1", "replace")
    head = (
        f"HTTP/1.1 {status} {phrase}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        "X-Splitproxy-Error: 1\r\n"
    )
    if retry_after is not None:
        head += f"Retry-After: {retry_after}\r\n"
    if close:
        head += "Connection: close\r\n"
    if request_id:
        return head.encode("latin-1") + b"X-Request-Id: " + request_id + b"\r\n\r\n" + body
    return head.encode("latin-1") + b"\r\n" + body


def cookie_value(header: bytes, name: bytes) -> bytes | None:
    """The value of cookie `name` in a `Cookie` request header, if present."""
    for part in header.split(b";"):
        key, sep, value = part.strip().partition(b"=")
        if sep and key == name:
            return value.strip(b'"')
    return None
