"""`HostPort` and `EndpointUrl`: parsed once by the config, read as typed parts everywhere."""

from __future__ import annotations

import pickle

import pytest

from splitproxy.config.address import EndpointUrl, HostPort
from splitproxy.config.models import Config
from splitproxy.routing.table import build


@pytest.mark.parametrize(("text", "host", "port"), [
    ("127.0.0.1:8080", "127.0.0.1", 8080),
    ("localhost:0", "localhost", 0),
    ("0.0.0.0:80", "0.0.0.0", 80),
    ("[::1]:9901", "::1", 9901),
    ("[::]:65535", "::", 65535),
])
def test_host_port_parts(text: str, host: str, port: int) -> None:
    value = HostPort(text)
    assert (value.host, value.port) == (host, port)
    assert value == text and str(value) == text  # prints and compares as written


@pytest.mark.parametrize("text", ["8080", ":80", "::1:80", "[::1]", "host:", "host:65536",
                                  "host:8o", "[]:80"])
def test_host_port_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="expected host:port"):
        HostPort(text)


@pytest.mark.parametrize(("listen", "url"), [
    ("127.0.0.1:9901", "http://127.0.0.1:9901"),
    ("0.0.0.0:9901", "http://127.0.0.1:9901"),  # a wildcard is reached on loopback
    ("[::]:9901", "http://[::1]:9901"),
    ("[::1]:9901", "http://[::1]:9901"),
    ("admin.local:9901", "http://admin.local:9901"),
])
def test_local_url(listen: str, url: str) -> None:
    assert HostPort(listen).local_url() == url


@pytest.mark.parametrize(("text", "address"), [
    ("http://127.0.0.1:9001", "127.0.0.1:9001"),
    ("http://Upstream.Example", "upstream.example:80"),  # no port: 80, host lower case
    ("http://[::1]:9001/", "[::1]:9001"),
])
def test_endpoint_address(text: str, address: str) -> None:
    url = EndpointUrl(text)
    assert url == text
    assert url.address == address


def test_the_config_parses_addresses_once_and_they_survive_pickling() -> None:
    # Configs cross process boundaries (the reload child, the workers) pickled.
    config = Config.model_validate({
        "listen": "0.0.0.0:8080", "admin": {"listen": "[::1]:9901"},
        "routes": [{"name": "shop", "weights": {"stable": 1},
                    "versions": {"stable": {"endpoints": ["http://10.0.0.7:9001"]}}}],
    })
    again = pickle.loads(pickle.dumps(config))
    assert again == config
    assert (again.listen[0].address.host, again.listen[0].address.port) == ("0.0.0.0", 8080)
    assert (again.admin.listen.host, again.admin.listen.port) == ("::1", 9901)
    [endpoint] = again.routes[0].versions["stable"].endpoints
    assert isinstance(endpoint, EndpointUrl) and endpoint.address.port == 9001
    # The routing table reads the parsed parts.
    [entry] = build(again).routes
    assert [(e.host, e.port) for e in entry.endpoints["stable"]] == [("10.0.0.7", 9001)]
    # Serialised as written.
    assert config.model_dump(mode="json")["admin"]["listen"] == "[::1]:9901"
