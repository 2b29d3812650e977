"""Active health checks of versions spoken to over HTTP/2 (`protocol: h2` or `auto`): the
probe speaks what the requests speak, on a connection of its own, as `probe` does for HTTP/1.1.

* a GET of the health `path` over HTTP/2 (h2c by prior knowledge, or TLS with ALPN h2), judged
  by its status as the HTTP/1.1 probe is;
* with `grpc_service`, the standard gRPC health check (grpc.health.v1.Health/Check, what
  Kubernetes' gRPC probes and Envoy's `grpc_health_check` call): a success is grpc-status OK
  with SERVING; NOT_SERVING, an unknown service or no health service at all is a failure. A
  gRPC server resets a plain GET, so a gRPC version needs this kind of check.

An `auto` endpoint that picks HTTP/1.1 by ALPN is probed with the HTTP/1.1 GET.

Lives beside `probe` (the HTTP/1.1 data plane) and uses the `h2` library directly: the
prober runs in every worker whether or not the HTTP/2 pools do.
"""

from __future__ import annotations

import asyncio
import struct

import h2.config
import h2.connection
import h2.events
import h2.exceptions

from splitproxy.config.address import netloc
from splitproxy.config.healthcheck import HealthCheck
from splitproxy.dataplane.tls import client_context, server_hostname
from splitproxy.routing.table import Endpoint

HEALTH_PATH = b"/grpc.health.v1.Health/Check"
SERVING = 1
_SERVING_STATUS = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}
_AUTO_ALPN = ("h2", "http/1.1")


def probe_host(endpoint: Endpoint, check: HealthCheck) -> str:
    """The Host a probe names: the check's `host`, else the name the endpoint's TLS verifies
    (`tls.server_name`: the virtual host it is reached as), else the endpoint's URL host; with
    the port unless it is the scheme's default, as a browser writes it."""
    tls = endpoint.tls
    name = check.host or (tls.server_name if tls is not None else None) or endpoint.host
    return name if endpoint.port == (443 if tls is not None else 80) \
        else netloc(name, endpoint.port)


def check_request(service: str) -> bytes:
    """A HealthCheckRequest{service} as one gRPC message (protobuf: field 1, a string)."""
    name = service.encode()
    message = b"\x0a" + _varint(len(name)) + name if name else b""
    return struct.pack(">BI", 0, len(message)) + message


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def serving_status(body: bytes) -> int | None:
    """HealthCheckResponse.status (field 1, an enum) from one gRPC message; None if the body
    is not one. An absent field is its default, UNKNOWN (0)."""
    if len(body) < 5 or body[0] != 0:
        return None
    size = struct.unpack(">I", body[1:5])[0]
    message = body[5:5 + size]
    if len(message) != size:
        return None
    at = 0
    while at < len(message):
        tag = message[at]
        at += 1
        value = 0
        shift = 0
        while at < len(message):  # every field of this message is a varint or length-prefixed
            byte = message[at]
            at += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        if tag == 0x08:
            return value
        if tag & 0x07 == 2:
            at += value  # a length-delimited field of a newer version: skipped
        elif tag & 0x07 != 0:
            return None
    return 0


async def probe_h2(endpoint: Endpoint, check: HealthCheck) -> str | None:
    """One probe of an HTTP/2 endpoint: None on success, else why it failed."""
    tls = endpoint.tls
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(check.timeout):
            ssl = None
            if tls is not None:
                ssl = client_context(tls, _AUTO_ALPN if endpoint.protocol == "auto" else ("h2",))
            reader, writer = await asyncio.open_connection(
                endpoint.host, endpoint.port, ssl=ssl,
                server_hostname=server_hostname(tls, endpoint.host) if tls else None)
            alpn = None
            if tls is not None:
                alpn = writer.get_extra_info("ssl_object").selected_alpn_protocol()
                if alpn != "h2":
                    if alpn == "http/1.1" and check.grpc_service is None:
                        return await _http1_get(reader, writer, endpoint, check)
                    return f"no HTTP/2 by ALPN ({alpn or 'none agreed'})"
            return await _exchange(reader, writer, endpoint, check)
    except TimeoutError:
        return f"no answer within {check.timeout:g}s"
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"
    except h2.exceptions.ProtocolError as exc:
        return f"bad HTTP/2 answer: {exc}"
    finally:
        if writer is not None:
            writer.close()


async def _http1_get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     endpoint: Endpoint, check: HealthCheck) -> str | None:
    writer.write((f"GET {check.path} HTTP/1.1\r\nHost: {probe_host(endpoint, check)}\r\n"
                  "User-Agent: splitproxy-health-check\r\nConnection: close\r\n\r\n").encode())
    line = await reader.readline()
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        return "no HTTP status line" if not line else f"bad status line {line[:60]!r}"
    return _judge(int(parts[1]), check)


def _judge(status: int, check: HealthCheck) -> str | None:
    ok = status in check.expect_status if check.expect_status else 200 <= status < 400
    return None if ok else f"status {status}"


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    endpoint: Endpoint, check: HealthCheck) -> str | None:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=True, header_encoding=None))
    conn.initiate_connection()
    scheme = b"https" if endpoint.tls is not None else b"http"
    base = [(b":scheme", scheme), (b":authority", probe_host(endpoint, check).encode())]
    grpc = check.grpc_service is not None
    if grpc:
        conn.send_headers(1, [(b":method", b"POST"), *base, (b":path", HEALTH_PATH),
                              (b"content-type", b"application/grpc"), (b"te", b"trailers"),
                              (b"user-agent", b"splitproxy-health-check")])
        conn.send_data(1, check_request(check.grpc_service or ""), end_stream=True)
    else:
        conn.send_headers(1, [(b":method", b"GET"), *base, (b":path", check.path.encode()),
                              (b"user-agent", b"splitproxy-health-check")], end_stream=True)
    writer.write(conn.data_to_send())
    status = 0
    fields: list[tuple[bytes, bytes]] = []
    body = b""
    while True:
        data = await reader.read(65536)
        if not data:
            return "connection closed before the answer"
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived) and event.stream_id == 1:
                fields = list(event.headers or [])
                status = int(dict(fields).get(b":status", b"0"))
                if not grpc:
                    return _judge(status, check)  # the head is the answer
                if event.stream_ended is not None:
                    return _grpc_verdict(status, fields, body)
            elif isinstance(event, h2.events.DataReceived) and event.stream_id == 1:
                body += event.data or b""
                conn.acknowledge_received_data(event.flow_controlled_length, 1)
            elif isinstance(event, h2.events.TrailersReceived) and event.stream_id == 1:
                return _grpc_verdict(status, [*fields, *(event.headers or [])], body)
            elif isinstance(event, h2.events.StreamReset) and event.stream_id == 1:
                return f"stream reset (error code {int(event.error_code or 0)})"
            elif isinstance(event, h2.events.ConnectionTerminated):
                return f"GOAWAY before the answer (error code {int(event.error_code or 0)})"
        writer.write(conn.data_to_send())


def _grpc_verdict(status: int, fields: list[tuple[bytes, bytes]], body: bytes) -> str | None:
    if status != 200:
        return f"status {status}"
    code = dict(fields).get(b"grpc-status")
    if code != b"0":
        return "no grpc-status" if code is None else f"grpc-status {code.decode()}" + (
            " (no grpc.health.v1 service)" if code == b"12" else
            " (unknown service)" if code == b"5" else "")
    serving = serving_status(body)
    if serving is None:
        return "not a HealthCheckResponse"
    return None if serving == SERVING else _SERVING_STATUS.get(serving, f"status {serving}")
