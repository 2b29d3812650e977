"""What an exchange needs of the client side it answers, and of the request head it was built
from: an HTTP/1.1 connection (`DownstreamProtocol`, httptools' parser) or one HTTP/2 stream
(`h2.stream.H2Stream`, the server's request facts). Typed as protocols, not as the HTTP/1.1
classes, so that the mypyc-compiled build, which checks every argument against its declared
class, accepts both."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from splitproxy.dataplane.http.flow import ClientFlow
    from splitproxy.dataplane.http.lifecycle import Lifecycle
    from splitproxy.dataplane.http.listener import ListenerInfo
    from splitproxy.dataplane.http.state import EventLoop, ServerState
    from splitproxy.dataplane.http.upstream import UpstreamConnection


class Downstream(Protocol):
    """The client side of an exchange."""

    # Read-only, so that a stream's own flow (a `ClientFlow` subclass) fits.
    @property
    def state(self) -> ServerState: ...

    @property
    def loop(self) -> EventLoop: ...

    @property
    def flow(self) -> ClientFlow: ...

    @property
    def client_ip(self) -> bytes: ...

    @property
    def listener(self) -> ListenerInfo: ...

    @property
    def identity(self) -> bytes | None: ...

    def write(self, data: bytes) -> None: ...

    def writelines(self, parts: list[bytes]) -> None: ...

    def abort(self) -> None: ...

    def exchange_done(self, ex: Lifecycle) -> None: ...

    def become_tunnel(self, up: UpstreamConnection, rest: bytes) -> None: ...


class RequestFacts(Protocol):
    """The parser's answers about a request head that `build_exchange` asks."""

    def get_method(self) -> bytes: ...

    def get_http_version(self) -> str: ...

    def should_keep_alive(self) -> bool: ...

    def should_upgrade(self) -> bool: ...
