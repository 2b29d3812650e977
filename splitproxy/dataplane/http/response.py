"""A response head, read once: which header lines pass on (hop-by-hop and `Connection`-named
ones removed, never the framing), the framing the upstream used, and the head written to the
client. Pure functions; no sockets."""

from __future__ import annotations

from splitproxy.dataplane.http.headers import HOP_BY_HOP, connection_tokens

# Never passed on: hop-by-hop headers, and the upstream's X-Request-Id (the proxy writes the
# request's own, the one it sent upstream and logged; an upstream that echoes it would
# otherwise make two).
_NOT_PASSED = HOP_BY_HOP | {b"x-request-id"}


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
_PLAIN_CONNECTION = frozenset({b"keep-alive", b"close", b"upgrade"})


def head_bytes(status: int, reason: bytes, lines: list[bytes], extra: object) -> bytes:
    parts = [b"HTTP/1.1 %d " % status + reason, *lines, *extra]  # type: ignore[misc]
    return b"\r\n".join(parts) + b"\r\n\r\n"
