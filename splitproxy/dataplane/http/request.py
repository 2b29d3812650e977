"""A request head, read once: framing checks (no smuggling), forwarding headers, the head
sent upstream. Pure functions over parsed header lists; no sockets."""

from __future__ import annotations

from dataclasses import dataclass, field

from splitproxy.dataplane.http.headers import SHADOW_MARKER, connection_tokens

# Request headers the head loop treats specially; everything else is forwarded as it came.
_SPECIAL = frozenset(
    {
        b"host", b"content-length", b"transfer-encoding", b"connection", b"keep-alive",
        b"proxy-connection", b"te", b"trailer", b"upgrade", b"expect", b"x-forwarded-for",
        b"x-forwarded-proto", b"x-forwarded-host", b"x-request-id", b"x-client-cert-subject",
        SHADOW_MARKER,
    }
)


class Reject(Exception):
    """A request the proxy refuses: answer `status` and close the connection."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(slots=True)
class RequestHead:
    lines: list[bytes]  # header lines to forward, hop-by-hop ones removed
    seen: dict[bytes, bytes]  # lower-case name -> (last) value, for routing lookups
    host: bytes | None = None
    content_length: bytes | None = None
    chunked: bool = False
    expect: bytes | None = None
    xff: bytes | None = None
    upgrade: bytes | None = None
    has_xfp: bool = False
    has_xfh: bool = False
    request_id: bytes | None = None  # the client's X-Request-Id; b"": sent more than once
    named: set[bytes] = field(default_factory=set)  # headers the Connection header names

    @property
    def has_body(self) -> bool:
        return self.chunked or (self.content_length is not None and self.content_length != b"0")


def read_head(headers: list[tuple[bytes, bytes]], client_11: bool) -> RequestHead:
    """One pass over the headers; raises `Reject` for ambiguous framing or a missing Host.

    llhttp already refuses Content-Length with Transfer-Encoding, duplicate or malformed
    Content-Length, bare LF and obs-fold; what it lets through and we refuse is any coding
    other than exactly `chunked`, a second Host and an empty one (nginx: 400 as well).

    The framing headers are not kept in `lines`: `upstream_head` writes them from what the
    parser read, so nothing (a `Connection` token included) can make the upstream frame the
    body differently from the proxy.
    """
    head = RequestHead([], {})
    lines = head.lines
    seen = head.seen
    for name, value in headers:
        lname = name.lower()
        seen[lname] = value
        if lname not in _SPECIAL:
            lines.append(name + b": " + value)
        elif lname == b"host":
            if head.host is not None:
                raise Reject(400, "more than one Host header")
            if not value.strip():
                raise Reject(400, "empty Host header")
            head.host = value
            lines.append(name + b": " + value)
        elif lname == b"content-length":
            head.content_length = value
        elif lname == b"transfer-encoding":
            if head.chunked or value.strip().lower() != b"chunked":
                raise Reject(400, "unsupported or repeated Transfer-Encoding")
            head.chunked = True
        elif lname == b"connection":
            head.named |= connection_tokens(value)
        elif lname == b"upgrade":
            head.upgrade = value
        elif lname == b"expect":
            head.expect = value
        elif lname == b"x-forwarded-for":
            head.xff = value if head.xff is None else head.xff + b", " + value
        elif lname == b"x-forwarded-proto":
            head.has_xfp = True
            lines.append(name + b": " + value)
        elif lname == b"x-forwarded-host":
            head.has_xfh = True
            lines.append(name + b": " + value)
        elif lname == b"x-request-id":
            head.request_id = value if head.request_id is None else b""
        elif lname == b"x-client-cert-subject":
            del seen[lname]  # only the proxy says who a client is (`listener`)
        elif lname == SHADOW_MARKER:
            del seen[lname]  # only the proxy marks a shadow copy (`mirror`)
        # else: keep-alive, proxy-connection, te, trailer: hop-by-hop, not forwarded
    if head.host is None and client_11:
        raise Reject(400, "HTTP/1.1 request without Host header")
    if head.named:
        head.lines = [ln for ln in lines if ln.split(b":", 1)[0].lower() not in head.named]
    return head


def upstream_head(method: bytes, target: bytes, head: RequestHead, client_ip: bytes,
                  upgrade: bool, scheme: bytes = b"http", identity: bytes | None = None) -> bytes:
    """The request head sent to the upstream (always HTTP/1.1 keep-alive), `target` in origin
    form; the one place that writes the forwarded request's framing."""
    lines = head.lines
    if upgrade and head.upgrade is not None:
        lines.append(b"Connection: upgrade")
        lines.append(b"Upgrade: " + head.upgrade)
    xff = head.xff
    lines.append(b"X-Forwarded-For: " + (xff + b", " + client_ip if xff is not None else client_ip))
    if head.has_xfp and scheme == b"https":
        # This proxy ended the TLS: it knows the scheme, a client's claim is replaced.
        lines = [ln for ln in lines if ln[:18].lower() != b"x-forwarded-proto:"]
        head.has_xfp = False
    if not head.has_xfp:
        lines.append(b"X-Forwarded-Proto: " + scheme)
    if identity is not None:
        lines.append(b"X-Client-Cert-Subject: " + identity)
    if not head.has_xfh and head.host is not None:
        lines.append(b"X-Forwarded-Host: " + head.host)
    if head.request_id:
        lines.append(b"X-Request-Id: " + head.request_id)
    if head.chunked:
        lines.append(b"Transfer-Encoding: chunked")
    elif head.content_length is not None:
        lines.append(b"Content-Length: " + head.content_length)
    return b"%s %s HTTP/1.1\r\n%s\r\n\r\n" % (method, target, b"\r\n".join(lines))


def body_refusal(expect: bytes | None, content_length: bytes | None,
                 max_body: int | None) -> tuple[int, str] | None:
    """A request refused for what it says of its body, before any of it is read: 417 for an
    Expect other than 100-continue, 413 for a declared length over `max_body` (a chunked
    body is counted as it comes)."""
    if expect is not None and expect.strip().lower() != b"100-continue":
        return 417, "only 'Expect: 100-continue' is supported"
    if max_body is not None and content_length is not None and int(content_length) > max_body:
        return 413, f"request body larger than {max_body} bytes"
    return None


def host_key(host: bytes | None) -> str:
    """Lower-case host without port, for route matching (`[::1]:80` -> `[::1]`)."""
    if host is None:
        return ""
    if host.startswith(b"["):
        return host.split(b"]", 1)[0].decode("latin-1").lower() + "]"
    return host.split(b":", 1)[0].decode("latin-1").lower()


def origin_form(url: bytes) -> bytes:
    """`http://host/path?q` (absolute form, sent to proxies) -> `/path?q`."""
    if url.startswith(b"/") or url == b"*":
        return url
    _, sep, rest = url.partition(b"://")
    if not sep:
        return url
    slash = rest.find(b"/")
    return rest[slash:] if slash >= 0 else b"/"
