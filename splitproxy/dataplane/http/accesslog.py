"""The access log (`logging.access_log: true`): one line per request on the
`splitproxy.access` logger, through the standard logging module (so the configured format,
text or JSON, applies; the fields are also on the record as `record.access`).

Off, it costs nothing per request: the server picks the protocol class when a connection
is accepted, `DownstreamProtocol` or `LoggedDownstream`, and only the latter counts bytes
and formats lines. A reload that turns it on or off applies to connections opened after it
(as nginx's reload leaves open connections to the old workers' settings).

The lines go to the `splitproxy.access` logger through `accesslines` (cheap records, handed
to the handlers in batches, at most 0.1 s late).

What a line says, and where it comes from:
* `status`: the final status line written to the client (interim 1xx answers skipped), read
  from the head the exchange writes; `499` (nginx's "client closed request") when the client
  went away before any answer, `502` when the proxy cut one before its head went out.
* `end`: `done`; `cut` when the proxy cut an answer already begun (the upstream failed or
  timed out mid-answer, or shutdown); `client-closed` when the client left before the end.
* `sent`: bytes written to the client for this request (head, body, chunk framing);
  `received`: the request's head (as parsed: request line and header lines) and body bytes.
* `duration_ms`: from the request head received to the end.
* `path`: without the query string (it often carries tokens), control characters escaped
  (`config.logsafe`), at most MAX_PATH characters.
"""

from __future__ import annotations

from typing import Final

from splitproxy.config import logsafe
from splitproxy.config.models import Config
from splitproxy.dataplane.http.downstream import DownstreamProtocol
from splitproxy.dataplane.http.lifecycle import DONE, QUEUED, Lifecycle
from splitproxy.dataplane.http.state import ServerState

MAX_PATH: Final = 1024
CLIENT_CLOSED: Final = 499

_HEAD: Final = b"HTTP/1.1 "
_QUOTE: Final = frozenset(' "=\\')


def protocol_for(config: Config) -> type[DownstreamProtocol]:
    """The protocol class for a new client connection."""
    return LoggedDownstream if config.logging.access_log else DownstreamProtocol


class _Request:
    """What the log needs of a request that the exchange does not keep."""

    __slots__ = ("method", "path", "received", "began")

    def __init__(self, method: bytes, url: bytes, received: int, began: float) -> None:
        self.method = method
        self.path = url.split(b"?", 1)[0]
        self.received = received
        self.began = began


class LoggedDownstream(DownstreamProtocol):
    """A client connection whose requests are written to the access log."""

    __slots__ = ("_requests", "_pending", "_sent", "_mark", "_status", "_logged")

    def __init__(self, state: ServerState) -> None:
        super().__init__(state)
        self._requests: dict[Lifecycle, _Request] = {}
        self._pending: _Request | None = None  # a head without its exchange yet (or refused)
        self._sent = 0  # bytes written on this connection
        self._mark = 0  # ... when the answer going out now began
        self._status = 0  # the final status written for the answer going out now
        self._logged: Lifecycle | None = None

    # -- what comes in ----------------------------------------------------------------------
    def on_headers_complete(self) -> None:
        parser = self.parser
        assert parser is not None  # called by it
        method = parser.get_method()
        # "METHOD url HTTP/1.1\r\n", "name: value\r\n" per header (counted by on_header),
        # "\r\n"
        size = len(method) + len(self._url) + 12 + 2 + self._head_size
        request = _Request(method, self._url, size, self.state.clock())
        self._pending = request
        super().on_headers_complete()  # may answer at once (and log), or raise Reject
        ex = self.receiving
        if self._pending is request and ex is not None:
            self._requests[ex] = request
            self._pending = None

    def on_body(self, body: bytes) -> None:
        ex = self.receiving
        request = self._requests.get(ex) if ex is not None else None
        if request is not None:
            request.received += len(body)
        super().on_body(body)

    def _reject(self, status: int, detail: str) -> None:
        rx = self.receiving
        if rx is not None and rx.phase is QUEUED:  # replaced by the refusal: it speaks for it
            self._pending = self._requests.pop(rx, None) or self._pending
        super()._reject(status, detail)

    # -- what goes out ----------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        self._sent += len(data)
        if not self._status and data.startswith(_HEAD):
            self._saw_head(data)
        super().write(data)

    def writelines(self, parts: list[bytes]) -> None:
        self._sent += sum(map(len, parts))
        if not self._status and parts and parts[0].startswith(_HEAD):
            self._saw_head(parts[0])
        super().writelines(parts)

    def _saw_head(self, data: bytes) -> None:
        status = int(data[9:12])
        if status >= 200 or status == 101:  # interim answers precede the final one
            self._status = status

    # -- endings ----------------------------------------------------------------------------
    def exchange_done(self, ex: Lifecycle) -> None:
        if ex is self.current:
            self._log(ex, "done")
        super().exchange_done(ex)

    def abort(self) -> None:
        ex = self.current
        if ex is not None and ex.phase is not QUEUED:
            self._log(ex, "cut")
        super().abort()

    def connection_lost(self, exc: Exception | None) -> None:
        for ex in (self.current, self.receiving):
            if ex is not None and ex.phase is not QUEUED and ex.phase is not DONE:
                self._log(ex, "client-closed")
        super().connection_lost(exc)

    def _log(self, ex: Lifecycle, end: str) -> None:
        if ex is self._logged:
            return
        self._logged = ex
        request = self._requests.pop(ex, None)
        if request is None:
            request, self._pending = self._pending, None
        now = self.state.clock()
        began = ex.request.start_time or (request.began if request is not None else now)
        status = self._status or (CLIENT_CLOSED if end == "client-closed" else 502)
        sent = self._sent - self._mark
        self._mark = self._sent
        self._status = 0
        log_request(self.state, ex, request.method if request is not None else None,
                    request.path if request is not None else b"", status, now - began, sent,
                    request.received if request is not None else 0, self.client_ip, end)


def log_request(state: ServerState, ex: Lifecycle, method: bytes | None, path: bytes,
                status: int, seconds: float, sent: int, received: int, client_ip: bytes,
                end: str) -> None:
    """One access-log line (also for HTTP/2 streams, `dataplane.h2`). `status`: the final
    status written (0 is not passed: 499 or 502 as the module says); `method` None: unknown."""
    version = ex.version
    pool = ex.pool
    route, name = (version.route, version.name) if version is not None else ("-", "-")
    method_s, path_s = ((method.decode("latin-1"), _path(path)) if method is not None
                        else ("-", "-"))
    duration = round(seconds * 1000.0, 3)
    upstream = pool.endpoint.key if pool is not None else "-"
    rid = ex.request.request_id.decode("latin-1") if ex.request.request_id else "-"
    client = client_ip.decode("latin-1")
    # Route and version names, methods (tokens), host:port and addresses never need
    # quoting; the path and a client's request id (`=`) may.
    state.access_lines.add(
        f"route={route} version={name} method={method_s} path={_value(path_s)} "
        f"status={status} duration_ms={duration} upstream={upstream} sent={sent} "
        f"received={received} request_id={_value(rid)} client={client} end={end}",
        {"route": route, "version": name, "method": method_s, "path": path_s,
         "status": status, "duration_ms": duration, "upstream": upstream, "sent": sent,
         "received": received, "request_id": rid, "client": client, "end": end})


def _path(raw: bytes) -> str:
    text = logsafe.escape(raw.decode("latin-1"))
    return text if len(text) <= MAX_PATH else text[:MAX_PATH] + "..."


def _value(text: str) -> str:
    """A logfmt value: quoted when it holds a space, a quote, `=` or a backslash."""
    if not text or not _QUOTE.isdisjoint(text):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text
