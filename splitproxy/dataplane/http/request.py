"""A request head, read once: framing checks (no smuggling), forwarding headers, the head
sent upstream. Pure functions over parsed header lists; no sockets."""

from __future__ import annotations

from typing import Final

from splitproxy.dataplane.http.headers import SHADOW_MARKER, connection_tokens

# Request headers the head loop treats specially; everything else is forwarded as it came.
_SPECIAL: Final = frozenset(
    {
        b"host", b"content-length", b"transfer-encoding", b"connection", b"keep-alive",
        b"proxy-connection", b"te", b"trailer", b"upgrade", b"expect", b"x-forwarded-for",
        b"x-forwarded-proto", b"x-forwarded-host", b"x-request-id", b"x-client-cert-subject",
        SHADOW_MARKER,
    }
)


# What a Host value may hold (RFC 9110 7.2: uri-host [":" port]): a reg-name (unreserved,
# percent-escapes, sub-delims), an IP literal in brackets, a port. Anything else (space, `/`,
# `@`, `\`, a control byte) is refused, as nginx and Go refuse it: the Host is routed on and
# passed to the upstream unchanged, so it must not be able to carry a path or a second name.
_HOST_CHARS: Final = (b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
                      b"-._~%!$&'()*+,;=:[]")

# Host values found valid. A Host repeats from request to request, and the check (a
# `translate`, which builds its table on every call) costs 1,100 instructions, 2% of a proxied
# request (callgrind); a set lookup costs a tenth. Bounded in count and length (a DNS name and
# a port), so no client can make it grow.
_VALID_HOSTS: Final[set[bytes]] = set()
_MAX_VALID_HOSTS: Final = 1024
_MAX_CACHED_HOST: Final = 300

# `int in bytes` is one memchr; `b"_" in name` costs 8x as much (measured: 31 vs 258 ns).
_UNDERSCORE: Final = ord("_")


class Reject(Exception):
    """A request the proxy refuses: answer `status` and close the connection."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class RequestHead:
    """What `read_head` found in a request's headers."""

    # Not a dataclass: its generated __init__ is exec'd Python that mypyc cannot compile.
    __slots__ = ("lines", "seen", "host", "content_length", "chunked", "expect", "xff",
                 "upgrade", "has_xfp", "has_xfh", "request_id", "named")

    def __init__(self, lines: list[bytes], seen: dict[bytes, bytes]) -> None:
        self.lines = lines  # header lines to forward, hop-by-hop ones removed
        self.seen = seen  # lower-case name -> (last) value, for routing lookups
        self.host: bytes | None = None
        self.content_length: bytes | None = None
        self.chunked = False
        self.expect: bytes | None = None
        self.xff: bytes | None = None
        self.upgrade: bytes | None = None
        self.has_xfp = False
        self.has_xfh = False
        self.request_id: bytes | None = None  # the client's X-Request-Id; b"": sent twice or more
        self.named: set[bytes] = set()  # headers the Connection header names

    @property
    def has_body(self) -> bool:
        return self.chunked or (self.content_length is not None and self.content_length != b"0")


def read_head(headers: list[tuple[bytes, bytes]], client_11: bool) -> RequestHead:
    """One pass over the headers; raises `Reject` for ambiguous framing or a missing Host.

    llhttp already refuses Content-Length with Transfer-Encoding, duplicate or malformed
    Content-Length, bare LF and obs-fold; what it lets through and we refuse is any coding
    other than exactly `chunked`, `Transfer-Encoding` in an HTTP/1.0 request (RFC 9112 6.1:
    its framing is faulty; a 1.0 hop in front would read the chunks as requests), a second
    Host, an empty one and one with characters no host or port has (nginx: 400 as well).

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
            if _UNDERSCORE in lname and lname.replace(b"_", b"-") in _SPECIAL:
                # CGI, WSGI and Rack read `_` as `-`: `X_Client_Cert_Subject` would reach
                # the upstream as the identity the proxy vouches for, `X_Forwarded_For` as
                # the client address. Dropped, as nginx drops every name with `_`.
                continue
            lines.append(name + b": " + value)
        elif lname == b"host":
            if head.host is not None:
                raise Reject(400, "more than one Host header")
            if value not in _VALID_HOSTS:
                _check_host(value)
            head.host = value
            lines.append(name + b": " + value)
        elif lname == b"content-length":
            head.content_length = value
        elif lname == b"transfer-encoding":
            if not client_11:
                raise Reject(400, "Transfer-Encoding in an HTTP 1.0 request")
            if head.chunked or value.strip().lower() != b"chunked":
                raise Reject(400, "unsupported or repeated Transfer-Encoding")
            head.chunked = True
        elif lname == b"connection":
            head.named |= connection_tokens(value)
        elif lname == b"upgrade":
            head.upgrade = _without_h2c(value)
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


def request_line_version(packet: bytes, method: bytes, url: bytes) -> str:
    """The HTTP version of the request line `packet` starts with, as the parser read it with
    `method` and `url`: "1.1" or "1.0", or "" when that is not plain to see (the parser is
    asked then: `get_http_version()` formats a string each time, 2,300 instructions a request
    by callgrind, this a fifth of that). Only for a packet the parser read from a message
    boundary, whose first request line it took: method, one space, url, " HTTP/1.x" and CRLF
    (the line holds no CR or LF of its own). Leading empty lines, which llhttp skips, fail
    the method check; any other spacing puts the version elsewhere."""
    at = len(method) + 1 + len(url)
    tail = packet[at:at + 11]
    if tail == b" HTTP/1.1\r\n":
        version = "1.1"
    elif tail == b" HTTP/1.0\r\n":
        version = "1.0"
    else:
        return ""
    return version if packet.startswith(method) and packet[len(method)] == 32 else ""


def _check_host(value: bytes) -> None:
    """Raises `Reject` for an empty or invalid Host; remembers a valid one."""
    if not value.strip():
        raise Reject(400, "empty Host header")
    if value.translate(None, _HOST_CHARS):
        raise Reject(400, "invalid Host header")
    if len(value) <= _MAX_CACHED_HOST:
        if len(_VALID_HOSTS) >= _MAX_VALID_HOSTS:
            _VALID_HOSTS.clear()  # a client sending a new Host every time: start again
        _VALID_HOSTS.add(value)


def _without_h2c(value: bytes) -> bytes | None:
    """`Upgrade` less `h2c` (None: nothing left). The HTTP/1.1-to-h2c upgrade (RFC 7540 3.2,
    dropped by RFC 9113) is ignored, never passed to the upstream: a 101 from an h2c upstream
    would make a blind tunnel of the connection, past routing. A client that wants HTTP/2
    speaks it by prior knowledge or ALPN (`dataplane.h2`)."""
    if b"h2c" not in value.lower():
        return value
    rest = [t for t in (p.strip() for p in value.split(b",")) if t and t.lower() != b"h2c"]
    return b", ".join(rest) or None


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
    """Lower-case host without port or trailing dot, for route matching (`[::1]:80` ->
    `[::1]`, `Shop.Example.:80` -> `shop.example`: the same name, as nginx reads it)."""
    if host is None:
        return ""
    if host.startswith(b"["):
        return host.split(b"]", 1)[0].decode("latin-1").lower() + "]"
    key = host.split(b":", 1)[0].decode("latin-1").lower()
    return key[:-1] if key.endswith(".") else key


def absolute_target(url: bytes, head: RequestHead, method: bytes) -> bytes:
    """The origin-form target of a request whose target is not a path: `*` (OPTIONS only) or
    the absolute form sent to proxies, `http://host/path?q` -> `/path?q`; raises `Reject`.

    RFC 9112 3.2.2 makes an absolute target's authority win over `Host`. Routing on one while
    the upstream reads the other would let two hops disagree on the host, so the two must name
    the same host (port aside), else 400 (as HAProxy); without a Host header (HTTP/1.0) the
    authority becomes the Host, routed on and forwarded. A userinfo (`user@host`) is refused.
    """
    if url == b"*":
        if method == b"OPTIONS":
            return url
        raise Reject(400, "the target '*' is for OPTIONS only")
    _, sep, rest = url.partition(b"://")
    if not sep:
        raise Reject(400, "request target is neither a path nor an absolute URL")
    cut = len(rest)
    for stop in (b"/", b"?"):
        at = rest.find(stop)
        if 0 <= at < cut:
            cut = at
    authority, target = rest[:cut], rest[cut:]
    if not authority or authority.translate(None, _HOST_CHARS):
        raise Reject(400, "invalid authority in the request target")
    if head.host is None:
        head.host = authority
        head.lines.insert(0, b"Host: " + authority)
    elif host_key(authority) != host_key(head.host):
        raise Reject(400, "the request target names another host than the Host header")
    return target if target.startswith(b"/") else b"/" + target
