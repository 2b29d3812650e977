"""Header rules shared by both directions: hop-by-hop removal and the proxy's own responses."""

from __future__ import annotations

from http import HTTPStatus

# RFC 9110 7.6.1: meaningful for one connection only, never forwarded. Headers named in a
# `Connection` header are removed as well (see `connection_tokens`).
HOP_BY_HOP = frozenset(
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
_CONNECTION_OPTIONS = frozenset({b"close", b"keep-alive", b"upgrade"})

CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"


def connection_tokens(value: bytes) -> set[bytes]:
    """Header names listed in a `Connection` header, beyond the options it always carries."""
    return {t for t in (p.strip().lower() for p in value.split(b",")) if t} - _CONNECTION_OPTIONS


def error_response(status: int, detail: str, close: bool) -> bytes:
    """A complete short text/plain response made by the proxy itself."""
    phrase = HTTPStatus(status).phrase
    body = f"{status} {phrase}: {detail}\n".encode("latin-1", "replace")
    head = (
        f"HTTP/1.1 {status} {phrase}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        "X-Splitproxy-Error: 1\r\n"
    )
    if close:
        head += "Connection: close\r\n"
    return head.encode("latin-1") + b"\r\n" + body


def cookie_value(header: bytes, name: bytes) -> bytes | None:
    """The value of cookie `name` in a `Cookie` request header, if present."""
    for part in header.split(b";"):
        key, sep, value = part.strip().partition(b"=")
        if sep and key == name:
            return value.strip(b'"')
    return None
