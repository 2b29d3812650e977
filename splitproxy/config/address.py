"""Network addresses of the config, parsed once at load: `HostPort` (`listen`, `admin.listen`)
and `EndpointUrl` (an upstream endpoint). Nothing below `load()` splits text at a colon.

Both are `str` subclasses: they print, compare, hash, pickle and serialise as the text that was
written (so `/status`, the logs, the stored rollout state and the identity hashes are what they
were), and carry their parts as typed attributes.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from pydantic import GetCoreSchemaHandler
from pydantic_core import core_schema

# Wildcard addresses listen everywhere; a client on the same machine reaches them on loopback.
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1"}


def netloc(host: str, port: int) -> str:
    """`host:port`, an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class HostPort(str):
    """`host:port` such as `127.0.0.1:8080`, `localhost:9901` or `[::1]:8080`; `host` has no
    brackets, `port` is 0..65535 (0: any free port)."""

    host: str
    port: int

    def __new__(cls, text: str) -> HostPort:
        host, sep, port = text.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            bare = host[1:-1]
        else:
            bare = "" if ":" in host else host  # unbracketed IPv6 is ambiguous with the port
        if not (sep and bare and port.isdigit() and int(port) <= 65535):
            raise ValueError(
                f"expected host:port such as 127.0.0.1:8080 or [::1]:8080, got {text!r}")
        self = super().__new__(cls, text)
        self.host = bare
        self.port = int(port)
        return self

    @classmethod
    def of(cls, host: str, port: int) -> HostPort:
        return cls(netloc(host, port))

    def local_url(self, scheme: str = "http") -> str:
        """The URL a client on this machine reaches the address at (a wildcard address is
        reached on loopback)."""
        return f"{scheme}://{netloc(_WILDCARDS.get(self.host, self.host), self.port)}"

    @classmethod
    def _validate(cls, value: object) -> HostPort:
        if isinstance(value, cls):
            return value
        if not isinstance(value, str):
            raise ValueError(
                f"expected host:port such as 127.0.0.1:8080 or [::1]:8080, got {value!r}")
        return cls(value)

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            cls._validate, serialization=core_schema.to_string_ser_schema())


class EndpointUrl(str):
    """An upstream endpoint, `http://host[:port]` or `https://host[:port]` without path or
    query; `address` is its host (lower case, no brackets) and port (80 or 443 when the URL
    names none); `secure` is true for https."""

    address: HostPort
    secure: bool

    def __new__(cls, text: str) -> EndpointUrl:
        try:
            parts = urlsplit(text)
            # .port raises for a port that is not a number in 0..65535; none at all means 80.
            ok = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
        except ValueError:
            ok = False
        if not ok or parts.username:
            raise ValueError(f"expected an endpoint like http://127.0.0.1:9001, got {text!r}")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(f"endpoint {text!r} must not have a path or query")
        self = super().__new__(cls, text)
        assert parts.hostname is not None
        self.secure = parts.scheme == "https"
        self.address = HostPort.of(parts.hostname, parts.port or (443 if self.secure else 80))
        return self

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        # A non-string is "expected a string", as for every other string field.
        return core_schema.no_info_after_validator_function(
            cls, core_schema.str_schema(), serialization=core_schema.to_string_ser_schema())
