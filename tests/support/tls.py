"""Certificates for the TLS tests (made by `trustme`, written to files as the config wants
them) and a TLS client that reads responses strictly (`rawhttp.RawClient` over TLS)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trustme

from .rawhttp import RawClient
from .waiting import WAIT


@dataclass(frozen=True)
class CertFiles:
    cert: Path  # chain, leaf first
    key: Path

    def listener(self, *names: str) -> dict[str, Any]:
        """One entry of a listener's `certificates`."""
        return {"cert": str(self.cert), "key": str(self.key), "names": list(names)}

    def client_side(self) -> dict[str, str]:
        """`cert`/`key` for a version's `tls` (a client certificate)."""
        return {"cert": str(self.cert), "key": str(self.key)}


def write_ca(ca: trustme.CA, directory: Path, name: str = "ca.pem") -> Path:
    path = directory / name
    ca.cert_pem.write_to_path(str(path))
    return path


def issue(ca: trustme.CA, directory: Path, stem: str, *identities: str,
          common_name: str | None = None, expired: bool = False, **subject: str) -> CertFiles:
    """A leaf certificate for `identities` (host names or IPs) written as stem.pem/stem.key;
    `subject`: trustme's organization_name / organization_unit_name."""
    kw: dict[str, Any] = dict(subject)
    if expired:
        now = datetime.datetime.now(datetime.UTC)
        kw |= {"not_before": now - datetime.timedelta(days=10),
               "not_after": now - datetime.timedelta(days=1)}
    leaf = ca.issue_cert(*identities, common_name=common_name, **kw)
    files = CertFiles(directory / f"{stem}.pem", directory / f"{stem}.key")
    with open(files.cert, "wb") as f:
        for pem in leaf.cert_chain_pems:
            f.write(pem.bytes())
    leaf.private_key_pem.write_to_path(str(files.key))
    return files


def client_context(ca_file: Path | None, cert: CertFiles | None = None,
                   alpn: tuple[str, ...] = ("http/1.1",)) -> ssl.SSLContext:
    """A client context trusting `ca_file` (None: no verification), with a client cert,
    offering `alpn` (the raw HTTP/1.1 client by default; the proxy prefers h2 when offered)."""
    if ca_file is None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx = ssl.create_default_context(cafile=str(ca_file))
    if cert is not None:
        ctx.load_cert_chain(cert.cert, cert.key)
    ctx.set_alpn_protocols(list(alpn))
    return ctx


def server_context(cert: CertFiles) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert.cert, cert.key)
    return ctx


@contextlib.asynccontextmanager
async def tls_client(port: int, ctx: ssl.SSLContext,
                     server_name: str | None = "localhost") -> AsyncIterator[RawClient]:
    """A TLS connection to 127.0.0.1:`port`, SNI `server_name` (None: no SNI sent)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(
        "127.0.0.1", port, ssl=ctx, server_hostname=server_name or "", limit=1 << 20), WAIT)
    client = RawClient(reader, writer)
    try:
        yield client
    finally:
        await client.close()


def peer_names(client: RawClient) -> list[str]:
    """The DNS names of the certificate the server presented."""
    ssl_object = client.writer.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True)
    from cryptography import x509

    cert = x509.load_der_x509_certificate(der)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return list(san.value.get_values_for_type(x509.DNSName))
