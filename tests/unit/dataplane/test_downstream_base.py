"""`peer.Downstream`, the compiled base class of an exchange's client side: no subclass may
declare one of its fields again. Compiled code reads a field from the base's C struct; a
subclass's own slot (or property) of the same name would hold another value, unseen by it."""

from __future__ import annotations

import pytest

# Imported for their subclasses: the HTTP/1.1 connection, the access-logged one, HTTP/2.
import splitproxy.dataplane.h2.server
import splitproxy.dataplane.h2.stream
import splitproxy.dataplane.http.accesslog
import splitproxy.dataplane.http.downstream  # noqa: F401
from splitproxy.dataplane.http.peer import Downstream

FIELDS = ("state", "loop", "flow", "client_ip", "listener", "identity")


def subclasses(cls: type) -> list[type]:
    found: list[type] = []
    sub: type
    for sub in cls.__subclasses__():
        found += [sub, *subclasses(sub)]
    return found


def test_the_http1_connection_and_the_http2_stream_derive_from_it() -> None:
    names = {cls.__name__ for cls in subclasses(Downstream)}
    assert {"ClientConnection", "DownstreamProtocol", "LoggedDownstream", "H2Stream",
            "H2Server"} <= names


@pytest.mark.parametrize("cls", subclasses(Downstream), ids=lambda c: c.__qualname__)
def test_no_subclass_declares_a_field_of_the_base_again(cls: type) -> None:
    assert not set(FIELDS) & set(vars(cls)), cls
