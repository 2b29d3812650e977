"""Shadow traffic (a route's `mirror`): a copy of some requests goes to another version, its
answer is compared with the primary's and thrown away (README: Shadow traffic).

The client never waits for the copy: the copy is its own task on the loop, bounded per route
(`max_in_flight`, beyond it the copy is dropped) and by its own timeout (dropped as well), on
a connection of the mirror's own, never one of the primary's pools. Those connections are kept
alive between copies (`Shadow.take`/`give`): measured against nginx's `mirror`, a new
connection per copy cost 0.17x of the unmirrored throughput at 100%, kept ones 0.35-0.54x.
A route without `mirror` pays one attribute test per request (dispatch); a mirrored route's
exchanges are `MirroredExchange`, which records the primary's answer for the comparison.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from typing import TYPE_CHECKING, Any, Final

import httptools

from splitproxy.dataplane.http.exchange import Exchange
from splitproxy.dataplane.http.lifecycle import DONE
from splitproxy.dataplane.http.shadow import Shadow
from splitproxy.dataplane.tls import client_context, server_hostname

if TYPE_CHECKING:
    from splitproxy.dataplane.http.lifecycle import RequestContext
    from splitproxy.dataplane.http.peer import Downstream
    from splitproxy.dataplane.http.runtime import VersionRuntime
    from splitproxy.routing.table import Endpoint

log = logging.getLogger("splitproxy.mirror")

# Named by headers.SHADOW_MARKER, which is removed from every client request first.
SHADOW_HEADER: Final = b"X-Splitproxy-Shadow: 1"
# Bodies are kept whole (for JSON normalisation) up to this; beyond, only hashed as bytes.
COMPARE_CAP: Final = 1 << 20


def mirrored(shadow: Shadow, down: Downstream, version: VersionRuntime,
             request: RequestContext, method: bytes, content_length: bytes | None
             ) -> Exchange:
    """The exchange for a request of a mirrored route (dispatch's hook)."""
    if version is shadow.version or not shadow.wanted(method, request, content_length):
        # A request the shadow version answers itself is not copied to it again.
        return Exchange(down, version, request)
    if shadow.in_flight >= shadow.config.max_in_flight:
        shadow.count("dropped")
        return Exchange(down, version, request)
    return MirroredExchange(down, version, request, _Pair(shadow, method == b"HEAD"))


class _Answer:
    """What is compared of one answer: its status and a digest of its headers and body."""

    __slots__ = ("status", "headers", "parts", "size", "hasher")

    def __init__(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.parts: list[bytes] | None = []  # None: over COMPARE_CAP, only hashed
        self.size = 0
        self.hasher = hashlib.sha256()

    def body(self, data: bytes) -> None:
        self.hasher.update(data)
        self.size += len(data)
        if self.parts is not None:
            if self.size > COMPARE_CAP:
                self.parts = None
            else:
                self.parts.append(data)

    def digest(self, shadow: Shadow) -> bytes:
        headers = sorted((k.lower(), v.strip()) for k, v in self.headers
                         if k.lower() not in shadow.ignored)
        body = self.hasher.digest()
        fields = shadow.config.compare.ignore_json_fields
        if fields and self.parts is not None:
            body = _json_digest(b"".join(self.parts), fields) or body
        return hashlib.sha256(repr((headers, body)).encode("latin-1")).digest()


def _json_digest(raw: bytes, fields: tuple[str, ...]) -> bytes | None:
    """The digest of a JSON body with `fields` (dotted paths) removed; None: not JSON."""
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    for path in fields:
        _drop(doc, path.split("."))
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).digest()


def _drop(doc: Any, path: list[str]) -> None:
    if isinstance(doc, list):  # a field of every element of a list
        for item in doc:
            _drop(item, path)
    elif isinstance(doc, dict):
        if len(path) == 1:
            doc.pop(path[0], None)
        elif path[0] in doc:
            _drop(doc[path[0]], path[1:])


class _Pair:
    """The primary's answer and the shadow's, compared when both are in."""

    __slots__ = ("shadow", "head_only", "primary", "copy", "pending", "body", "launched")

    def __init__(self, shadow: Shadow, head_only: bool) -> None:
        self.shadow = shadow
        self.head_only = head_only
        self.primary: _Answer | None = _Answer()
        self.copy: _Answer | str | None = None  # an answer, or "dropped"/"error"
        self.pending = 2
        self.body: list[bytes] = []
        self.launched = False

    def launch(self, down: Downstream, head: bytes) -> None:
        if self.launched:
            return
        self.launched = True
        shadow = self.shadow
        shadow.in_flight += 1
        # The head as sent to the primary (HTTP/1.1, kept alive), marked.
        copy_head = head[:-2] + SHADOW_HEADER + b"\r\n\r\n"
        task = down.loop.create_task(self._send(copy_head, b"".join(self.body)))
        shadow.tasks.add(task)
        task.add_done_callback(shadow.tasks.discard)
        self.body = []

    async def _send(self, head: bytes, body: bytes) -> None:
        shadow = self.shadow
        answer = _Answer()
        writer: asyncio.StreamWriter | None = None
        result: _Answer | str = "error"
        try:
            async with asyncio.timeout(shadow.config.timeout):
                pool = shadow.version.next_pool()
                if pool is None:
                    raise OSError("no healthy endpoint")
                ep = pool.endpoint
                kept = shadow.take(ep.key)
                while True:
                    if kept is None:
                        reader, writer = await _connect(ep)
                    else:
                        reader, writer = kept
                    writer.write(head + body)
                    try:
                        reusable = await _read_answer(reader, answer, self.head_only)
                    except (EOFError, ConnectionError):
                        if kept is None or answer.status:
                            raise
                        # A kept-alive connection the shadow closed while it was idle: once
                        # more on a new one, as any HTTP client does.
                        writer.close()
                        writer, kept, answer = None, None, _Answer()
                        continue
                    break
                result = answer
                if reusable:
                    shadow.give(ep.key, reader, writer)
                    writer = None
        except TimeoutError:
            result = "dropped"
        except (OSError, httptools.HttpParserError, EOFError) as exc:
            log.debug("shadow copy to %s failed: %s", shadow.version.name, exc)
        finally:
            shadow.in_flight -= 1
            if writer is not None:
                writer.close()
        self.copy = result
        self._one_done()

    def primary_done(self, answered: bool) -> None:
        if not answered:
            self.primary = None  # cut or abandoned: nothing to compare with
        self._one_done()

    def _one_done(self) -> None:
        self.pending -= 1
        if self.pending == 0:
            self.shadow.count(self._verdict())

    def _verdict(self) -> str:
        copy, primary, shadow = self.copy, self.primary, self.shadow
        if isinstance(copy, str):
            return copy
        if primary is None or copy is None:
            return "dropped"
        if primary.status // 100 != copy.status // 100:
            return "mismatch"
        if shadow.config.compare.body and primary.digest(shadow) != copy.digest(shadow):
            return "mismatch"
        return "match"


async def _connect(ep: Endpoint) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    tls = ep.tls
    if tls is None:
        return await asyncio.open_connection(ep.host, ep.port)
    return await asyncio.open_connection(ep.host, ep.port, ssl=client_context(tls),
                                         server_hostname=server_hostname(tls, ep.host))


class _Reader:
    """httptools' callbacks for one response."""

    def __init__(self, answer: _Answer, head_only: bool) -> None:
        self.answer = answer
        self.head_only = head_only
        self.complete = False
        self.messages = 0  # more than one: the shadow sent more than its answer
        self.keep_alive = False  # as its head says (llhttp forgets it once the message ends)
        self.parser: httptools.HttpResponseParser | None = None

    def on_message_begin(self) -> None:
        self.messages += 1

    def on_header(self, name: bytes, value: bytes) -> None:
        self.answer.headers.append((name, value))

    def on_headers_complete(self) -> None:
        assert self.parser is not None
        self.answer.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()
        if self.head_only:
            self.complete = True

    def on_body(self, data: bytes) -> None:
        self.answer.body(data)

    def on_message_complete(self) -> None:
        self.complete = True


async def _read_answer(reader: asyncio.StreamReader, answer: _Answer, head_only: bool
                       ) -> bool:
    """Reads one answer into `answer`; True when its connection may carry the next copy (the
    answer framed by its length or chunks, keep-alive, nothing after it, not a HEAD's)."""
    callbacks = _Reader(answer, head_only)
    parser = callbacks.parser = httptools.HttpResponseParser(callbacks)
    while not callbacks.complete:
        data = await reader.read(65536)
        if not data:
            if answer.status:  # a body delimited by the close
                return False
            raise EOFError("the shadow closed the connection before answering")
        parser.feed_data(data)
    return not head_only and callbacks.messages == 1 and callbacks.keep_alive


class MirroredExchange(Exchange):
    """An exchange whose request is also copied to the route's shadow version: records the
    primary's answer, and sends the copy once the request is whole."""

    __slots__ = ("pair",)

    def __init__(self, down: Downstream, version: VersionRuntime,
                 request: RequestContext, pair: _Pair) -> None:
        super().__init__(down, version, request)
        self.pair = pair

    def start(self) -> None:
        if not self.request.has_body:
            self.pair.launch(self.down, self.request.head)
        super().start()

    def request_body(self, data: bytes) -> None:
        self.pair.body.append(data)  # at most max_body: checked by `wanted`
        super().request_body(data)

    def request_complete(self) -> None:
        if self.request.has_body:
            self.pair.launch(self.down, self.request.head)
        super().request_complete()

    def response_head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]],
                      up_keep_alive: bool) -> None:
        primary = self.pair.primary
        if primary is not None and not (100 <= status < 200 and status != 101):
            primary.headers = headers
        super().response_head(status, reason, headers, up_keep_alive)

    def response_body(self, data: bytes) -> None:
        primary = self.pair.primary
        if primary is not None and self.response_status:
            primary.body(data)
        super().response_body(data)

    def _done(self, status: int) -> None:
        primary = self.pair.primary
        if primary is not None:
            primary.status = status
        self._ended(True)
        super()._done(status)

    def client_gone(self) -> None:
        if self.phase is not DONE:
            self._ended(False)
        super().client_gone()

    def _abort_client(self) -> None:
        if self.phase is not DONE:
            self._ended(False)
        super()._abort_client()

    def _ended(self, answered: bool) -> None:
        pair = self.pair
        if not pair.launched:  # ended before its request was whole: no copy is sent
            pair.launched = True
            pair.copy = "dropped"
            pair.pending -= 1
        pair.primary_done(answered)
