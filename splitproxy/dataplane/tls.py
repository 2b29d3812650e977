"""TLS contexts: a listener's certificates chosen by SNI and reloaded when their files change,
and the client contexts `https://` endpoints are reached with.

A listener's socket keeps one `ssl.SSLContext` for its life; its `sni_callback` moves every
handshake onto the context of the certificate the client asked for, looked up in a table a
reload replaces whole. So a new certificate serves the next handshake, connections already
open keep theirs, and nothing is re-bound.
"""

from __future__ import annotations

import functools
import logging
import os
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

from splitproxy.config.tls import ClientAuth, ListenerTls, TlsVersion, UpstreamTls, load_problem

log = logging.getLogger("splitproxy.tls")

# Mozilla's "intermediate" profile for TLS 1.2 (ECDHE and AEAD only; no DHE, which would
# need a dhparam file): what nginx's and Envoy's documentation recommend for general use.
DEFAULT_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)
# What a TLS listener offers clients, preferred first: HTTP/2 (`dataplane.h2`), then HTTP/1.1.
SERVER_ALPN = ["h2", "http/1.1"]
# What a client context offers upstream: HTTP/1.1 only for the HTTP/1.1 pools (an h2-capable
# upstream must not pick h2 for a connection that will speak HTTP/1.1); the HTTP/2 pools ask
# for ("h2",), or ("h2", "http/1.1") for `protocol: auto` (`dataplane.h2.upstream`).
UPSTREAM_ALPN = ("http/1.1",)

_VERSIONS = {TlsVersion.V1_2: ssl.TLSVersion.TLSv1_2, TlsVersion.V1_3: ssl.TLSVersion.TLSv1_3}
_VERIFY = {ClientAuth.NONE: ssl.CERT_NONE, ClientAuth.OPTIONAL: ssl.CERT_OPTIONAL,
           ClientAuth.REQUIRED: ssl.CERT_REQUIRED}


def server_context(tls: ListenerTls, cert: Path, key: Path) -> ssl.SSLContext:
    """One certificate's context; raises ssl.SSLError or OSError for files that do not load."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _VERSIONS[tls.min_version]
    ctx.set_ciphers(tls.ciphers or DEFAULT_CIPHERS)
    ctx.set_alpn_protocols(SERVER_ALPN)
    # Tickets off: their keys would live only in this process (and one per worker), so a
    # resumed session fails over to a full handshake anyway; TLS 1.3 keeps its own tickets.
    ctx.options |= ssl.OP_NO_TICKET | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.load_cert_chain(cert, key)
    ctx.verify_mode = _VERIFY[tls.verify]
    if tls.client_ca is not None:
        ctx.load_verify_locations(cafile=str(tls.client_ca))
    return ctx


def _mtimes(tls: ListenerTls) -> tuple[tuple[int, int], ...]:
    files = [p for c in tls.certificates for p in (c.cert, c.key)]
    if tls.client_ca is not None:
        files.append(tls.client_ca)  # a rotated client CA bundle is loaded again too
    stamps = []
    for path in files:
        try:
            st = os.stat(path)
            stamps.append((st.st_mtime_ns, st.st_size))
        except OSError:
            stamps.append((-1, -1))
    return tuple(stamps)


@dataclass(frozen=True, slots=True)
class _Table:
    default: ssl.SSLContext
    exact: dict[str, ssl.SSLContext]
    wildcard: dict[str, ssl.SSLContext]  # "example.com" for *.example.com

    def pick(self, name: str | None) -> ssl.SSLContext:
        if name is None:
            return self.default
        name = name.lower().rstrip(".")
        ctx = self.exact.get(name)
        if ctx is None:
            _, _, parent = name.partition(".")
            ctx = self.wildcard.get(parent, self.default)
        return ctx


def _build(tls: ListenerTls) -> _Table:
    contexts = [server_context(tls, c.cert, c.key) for c in tls.certificates]
    exact: dict[str, ssl.SSLContext] = {}
    wildcard: dict[str, ssl.SSLContext] = {}
    for cert, ctx in zip(tls.certificates, contexts, strict=True):
        for name in cert.names:
            name = name.lower()
            if name.startswith("*."):
                wildcard.setdefault(name[2:], ctx)
            else:
                exact.setdefault(name, ctx)  # the first certificate listed for a name wins
    return _Table(contexts[0], exact, wildcard)


class ServerTls:
    """A TLS listener's contexts: `context` is handed to the listening socket once; `check()`
    reloads the certificates whose files changed, keeping the old ones when the new do not
    load (logged with the file and the reason, and kept in `problem` until a set loads, as a
    bad config edit is); `update()` applies a reloaded config's certificates and policy."""

    def __init__(self, tls: ListenerTls, listener: str = "") -> None:
        self.tls = tls
        self.listener = listener  # its address, for reports
        self._table = _build(tls)  # raises at start: a listener without certificates is none
        self._stamps = _mtimes(tls)
        self.reloads = 0  # certificate sets loaded after the first
        self.failures = 0  # reloads refused
        # Why the files on disk do not serve (the file and the reason), since when (wall
        # clock); None while what is on disk is what serves.
        self.problem: str | None = None
        self.problem_since = 0.0
        # The socket's context: its sni_callback moves every handshake onto a certificate's
        # context. OpenSSL 3.0 takes a handshake's protocol versions and client verification
        # mode from this one (copied when the connection's SSL object is made), and its TLS
        # 1.2 ciphers and client CA store from the context chosen by SNI (tried with trustme
        # certificates; tests/integration/test_tls_policy.py holds both to it). So a policy
        # change is applied to both: this one in place (`_apply_policy`), the chosen ones
        # built anew.
        first = tls.certificates[0]
        self.context = server_context(tls, first.cert, first.key)
        self.context.sni_callback = self._on_sni

    def _on_sni(self, sock: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> None:
        sock.context = self._table.pick(name)

    def update(self, tls: ListenerTls) -> None:
        """A reloaded config's settings for this listener: certificates, names and policy
        (versions, ciphers, client verification) serve the next handshake once they load."""
        if tls != self.tls:
            self.tls = tls
            self._stamps = ()  # load again, even if no file changed
        self.check()

    def check(self) -> bool:
        """Reload if a file (or the settings) changed; True when a new set now serves."""
        stamps = _mtimes(self.tls)
        if stamps == self._stamps:
            return False
        try:
            table = _build(self.tls)
        except (ssl.SSLError, OSError, ValueError) as exc:
            self.failures += 1
            reason = _reason(self.tls, exc)
            if self.problem is None:
                self.problem_since = time.time()
            self.problem = reason
            log.error("tls: certificate reload refused, the old certificates keep serving: %s",
                      reason)
            self._stamps = stamps  # reported once per change, not every tick
            return False
        # Cannot fail: _build just applied the same settings to contexts of its own. Both
        # swaps happen between two handshakes (one thread), never during one's callback.
        _apply_policy(self.context, self.tls)
        self._table = table
        self._stamps = stamps
        self.reloads += 1
        if self.problem is not None:
            log.info("tls: the certificate files load again: %s no longer refused",
                     self.listener or "the listener")
        self.problem = None
        log.info("tls: certificates reloaded (%s)",
                 ", ".join(str(c.cert) for c in self.tls.certificates))
        return True


def _apply_policy(ctx: ssl.SSLContext, tls: ListenerTls) -> None:
    """The listener's policy on the socket's own context, for connections accepted from now
    on (each connection's SSL object copies it when made). Its client CA store is not
    replaced (OpenSSL offers no removal): verification uses the chosen context's store."""
    ctx.minimum_version = _VERSIONS[tls.min_version]
    ctx.set_ciphers(tls.ciphers or DEFAULT_CIPHERS)
    ctx.verify_mode = _VERIFY[tls.verify]


def _reason(tls: ListenerTls, exc: Exception) -> str:
    """Which file failed and why: each is loaded alone to name the culprit."""
    for cert in tls.certificates:
        if (problem := load_problem(cert.cert, cert.key)) is not None:
            return problem
    return str(exc)


@functools.lru_cache(maxsize=64)
def client_context(tls: UpstreamTls, alpn: tuple[str, ...] = UPSTREAM_ALPN) -> ssl.SSLContext:
    """The context for an endpoint's `tls` settings offering the `alpn` protocols, made once
    per distinct pair."""
    if tls.verify:
        ctx = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(list(alpn))
    if tls.cert is not None:
        ctx.load_cert_chain(tls.cert, tls.key)
    return ctx


def server_hostname(tls: UpstreamTls, host: str) -> str:
    """The name verified, and sent as SNI: the configured one, else the endpoint's host
    (`ssl` sends no SNI for an IP address, RFC 6066, and checks it against the IP SANs)."""
    return tls.server_name if tls.server_name is not None else host


def identity(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> bytes | None:
    """A verified client certificate's subject, `CN=a,O=b` (RFC 4514 order: most specific
    first), or None without one."""
    if ssl_object is None:
        return None
    cert = ssl_object.getpeercert()
    if not cert:
        return None
    parts = []
    for rdn in reversed(cert.get("subject", ())):
        for name, value in rdn:
            short = _SHORT.get(name, name)
            escaped = value.replace("\\", "\\\\").replace(",", "\\,").replace("+", "\\+")
            parts.append(f"{short}={escaped}")
    return ",".join(parts).encode("utf-8", "replace")


_SHORT = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU",
          "countryName": "C", "stateOrProvinceName": "ST", "localityName": "L",
          "domainComponent": "DC", "userId": "UID", "emailAddress": "emailAddress"}
