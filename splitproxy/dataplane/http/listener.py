"""What a connection knows of the listener that accepted it: its scheme (for
X-Forwarded-Proto), a plaintext-to-HTTPS redirect, and the client certificate's identity."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Final

from splitproxy.dataplane import tls

# The verified client certificate's subject, sent upstream and readable by routing (a
# `hash_header` or `pin_header`); always removed from what a client sends, on every listener.
CLIENT_CERT_HEADER: Final = b"x-client-cert-subject"


@dataclass(frozen=True, slots=True)
class ListenerInfo:
    scheme: bytes  # b"http" or b"https"
    redirect_port: int | None = None  # plaintext: every request is redirected to this port
    tls: bool = False


PLAIN: Final = ListenerInfo(b"http")


def peer_identity(transport: asyncio.BaseTransport) -> bytes | None:
    """The verified client certificate's subject on a TLS connection (None without one)."""
    return tls.identity(transport.get_extra_info("ssl_object"))


def redirect_response(host: bytes | None, target: bytes, port: int, close: bool) -> bytes:
    """308 to the same URL over https (308 keeps the method and body, unlike 301)."""
    name = host or b"localhost"
    if name.startswith(b"["):
        name = name.split(b"]", 1)[0] + b"]"
    else:
        name = name.split(b":", 1)[0]
    location = b"https://" + name + (b":%d" % port if port != 443 else b"") + target
    body = b"308 Permanent Redirect: " + location + b"\n"
    head = (b"HTTP/1.1 308 Permanent Redirect\r\nLocation: " + location +
            b"\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n" % len(body))
    if close:
        head += b"Connection: close\r\n"
    return head + b"\r\n" + body
