"""What an exchange needs of the client side it answers, and of the request head it was built
from: an HTTP/1.1 connection (`DownstreamProtocol`, httptools' parser) or one HTTP/2 stream
(`h2.stream.H2Stream`, the server's request facts).

`Downstream` is a class both derive from, not a protocol: compiled, an exchange reads its
client side's fields from a C struct and calls its methods through a vtable, where a protocol
costs a dictionary-backed attribute lookup for each (~2,500 instructions a request, 5%,
callgrind). `RequestFacts` stays a protocol: httptools' parser is not ours to derive."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from mypy_extensions import mypyc_attr

if TYPE_CHECKING:
    from splitproxy.dataplane.http.flow import ClientFlow
    from splitproxy.dataplane.http.lifecycle import Lifecycle
    from splitproxy.dataplane.http.listener import ListenerInfo
    from splitproxy.dataplane.http.state import EventLoop, ServerState
    from splitproxy.dataplane.http.upstream import UpstreamConnection


# The HTTP/2 stream (Python, not compiled) derives from it. A subclass must not name these
# fields in its own `__slots__`: a slot of its own would hide the compiled one.
@mypyc_attr(allow_interpreted_subclasses=True)
class Downstream:
    """The client side of an exchange: its server, loop and flow control, who the client is,
    and how an exchange writes to it and hands it back."""

    __slots__ = ("state", "loop", "flow", "client_ip", "listener", "identity")

    def __init__(self, state: ServerState, flow: ClientFlow, listener: ListenerInfo,
                 client_ip: bytes = b"", identity: bytes | None = None) -> None:
        self.state = state
        self.loop: EventLoop = state.loop
        self.flow = flow
        self.client_ip = client_ip
        self.listener = listener
        self.identity = identity  # the verified client certificate's subject

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def writelines(self, parts: list[bytes]) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def exchange_done(self, ex: Lifecycle) -> None:
        """`ex` is finished: the next one may answer (HTTP/1.1), or the stream ends."""
        raise NotImplementedError

    def become_tunnel(self, up: UpstreamConnection, rest: bytes) -> None:
        """The upstream switched protocols: bytes go both ways untouched from now on."""
        raise NotImplementedError


class RequestFacts(Protocol):
    """The parser's answers about a request head that `build_exchange` asks."""

    def get_method(self) -> bytes: ...

    def get_http_version(self) -> str: ...

    def should_keep_alive(self) -> bool: ...

    def should_upgrade(self) -> bool: ...
