"""TLS settings of the config: listeners (`listen`, one address or several, each plaintext or
TLS) and upstream TLS (`versions.<name>.tls`, for `https://` endpoints).

Certificate and key files are read once at load, so `splitproxy check` and a reload refuse a
file that does not load with its name and the reason (the old certificate keeps serving); the
data plane reads them again when they change (`dataplane.tls`).
"""

from __future__ import annotations

import ssl
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, model_validator

from splitproxy.config.address import HostPort
from splitproxy.config.units import Frozen, Listen, Timeout

# Host names a certificate answers to by SNI: `example.com` or `*.example.com` (one label).
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?"
_SNI_NAME = rf"^(\*\.)?{_LABEL}(\.{_LABEL})*$"
SniName = Annotated[str, Field(pattern=_SNI_NAME)]


class TlsVersion(StrEnum):
    V1_2 = "1.2"
    V1_3 = "1.3"


class ClientAuth(StrEnum):
    """Client certificates on a TLS listener (mTLS)."""

    NONE = "none"  # not asked for
    OPTIONAL = "optional"  # asked for; a client without one is served without an identity
    REQUIRED = "required"  # the handshake fails without one from `client_ca`


def load_problem(cert: Path, key: Path | None) -> str | None:
    """Why a certificate chain and its key do not load together (None when they do); the
    message names the file."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    for path in (cert, key):
        if path is not None and not path.is_file():
            return f"{path}: no such file"
    try:
        ctx.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        return f"{cert}: does not load with key {key or cert}: {exc}"
    return None


def ca_problem(path: Path) -> str | None:
    """Why a CA bundle does not load (None when it does)."""
    try:
        ssl.create_default_context(cafile=str(path))
    except (ssl.SSLError, OSError) as exc:
        return f"{path}: not a CA bundle: {exc}"
    return None


class Certificate(Frozen):
    cert: Path  # PEM: the certificate, then its intermediates
    key: Path  # PEM: its private key (unencrypted)
    # SNI names it is chosen for; a listener's first certificate also answers every other
    # name and clients that send none.
    names: tuple[SniName, ...] = ()

    @model_validator(mode="after")
    def _loads(self) -> Certificate:
        if (problem := load_problem(self.cert, self.key)) is not None:
            raise ValueError(problem)
        return self


class ListenerTls(Frozen):
    certificates: tuple[Certificate, ...] = Field(min_length=1)
    min_version: TlsVersion = TlsVersion.V1_2
    # OpenSSL cipher list for TLS 1.2 (TLS 1.3 suites are OpenSSL's, all AEAD); the default is
    # Mozilla's "intermediate" profile: ECDHE with AES-GCM or ChaCha20-Poly1305 only.
    ciphers: str | None = None
    # mTLS: clients present a certificate signed by this CA bundle.
    client_ca: Path | None = None
    client_auth: ClientAuth | None = None  # default: required with a client_ca, else none
    # How often the certificate files are checked for a change (and reloaded).
    reload_interval: Timeout = 2.0

    @model_validator(mode="after")
    def _client_auth(self) -> ListenerTls:
        if self.client_ca is not None and (problem := ca_problem(self.client_ca)):
            raise ValueError(problem)
        if self.client_auth not in (None, ClientAuth.NONE) and self.client_ca is None:
            raise ValueError(f"client_auth {self.client_auth} needs a client_ca")
        if self.ciphers is not None:
            try:
                ssl.create_default_context().set_ciphers(self.ciphers)
            except ssl.SSLError:
                raise ValueError(f"ciphers: no cipher matches {self.ciphers!r}") from None
        return self

    @property
    def verify(self) -> ClientAuth:
        if self.client_auth is not None:
            return self.client_auth
        return ClientAuth.REQUIRED if self.client_ca is not None else ClientAuth.NONE


class Listener(Frozen):
    address: Listen
    tls: ListenerTls | None = None
    # Plaintext only: answer every request with a 308 to the same URL on the first TLS
    # listener.
    redirect_to_https: bool = False

    @property
    def scheme(self) -> str:
        return "https" if self.tls is not None else "http"

    @model_validator(mode="after")
    def _redirect_plain(self) -> Listener:
        if self.redirect_to_https and self.tls is not None:
            raise ValueError("redirect_to_https is for a plaintext listener, this one has tls")
        return self


def _one_or_many(value: Any) -> Any:
    """`listen: 127.0.0.1:8080` is one plaintext listener."""
    if isinstance(value, str):
        return [{"address": HostPort(value)}]  # an error names `listen`, as it always did
    if isinstance(value, list):
        return [{"address": v} if isinstance(v, str) else v for v in value]
    return value


Listeners = Annotated[tuple[Listener, ...], BeforeValidator(_one_or_many), Field(min_length=1)]


def listeners_text(listeners: tuple[Listener, ...]) -> str:
    """`127.0.0.1:8080, 127.0.0.1:8443 (tls)` for logs and `check` (one plaintext listener
    reads as it always did)."""
    return ", ".join(
        lst.address + (" (tls)" if lst.tls is not None else "")
        + (" (redirect to https)" if lst.redirect_to_https else "") for lst in listeners)


def listener_problems(listeners: tuple[Listener, ...]) -> list[str]:
    """Rules across listeners: distinct addresses, a TLS listener for every redirect."""
    problems = []
    seen: set[str] = set()
    for lst in listeners:
        if lst.address in seen and lst.address.port != 0:
            problems.append(f"address {lst.address} listed twice")
        seen.add(lst.address)
    if any(lst.redirect_to_https for lst in listeners) and not any(
            lst.tls is not None for lst in listeners):
        problems.append("redirect_to_https needs a listener with tls to redirect to")
    return problems


class UpstreamTls(Frozen):
    """How `https://` endpoints of a version are reached."""

    verify: bool = True  # the endpoint's certificate chain and name are checked
    ca_file: Path | None = None  # trusted CAs; default: the system store
    # SNI sent and name verified; default: the endpoint's host (no SNI for an IP address).
    server_name: str | None = None
    cert: Path | None = None  # client certificate (PEM), for upstreams that ask for one
    key: Path | None = None

    @model_validator(mode="after")
    def _files(self) -> UpstreamTls:
        if self.ca_file is not None and (problem := ca_problem(self.ca_file)):
            raise ValueError(problem)
        if self.key is not None and self.cert is None:
            raise ValueError("key without cert")
        if self.cert is not None and (problem := load_problem(self.cert, self.key)):
            raise ValueError(problem)
        return self
