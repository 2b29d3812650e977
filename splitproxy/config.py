"""Typed configuration: the only place that reads YAML.

`load(path)` returns a frozen `Config` or raises `ConfigError` whose message names the file, the
line and the field path (``config.yaml:12: routes[0].weights.canary: must be >= 0``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails


class ConfigError(Exception):
    """A config file that cannot be used; `errors` holds one line per problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


_Problem = tuple[tuple[str | int, ...], str]  # (location below the validated field, message)


class _Located(ValueError):
    """Cross-field problems that belong to fields *below* the validated one.

    Pydantic puts a validator's error on the field it validates; `load()` appends each
    `where` to that location so the message points at e.g. `weights.canary`, not `weights`.
    """

    def __init__(self, problems: list[_Problem]) -> None:
        super().__init__("; ".join(f"{'.'.join(map(str, w))}: {m}" for w, m in problems))
        self.problems = problems


_NUMBER = r"(-?(?:\d+(?:\.\d*)?|\.\d+))"
_DURATION = re.compile(_NUMBER + r"\s*(ms|s|m|h)?", re.IGNORECASE)
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE = re.compile(_NUMBER + r"\s*([a-z]*)", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1}
for _exp, _p in enumerate("kmgt", start=1):
    _SIZE_UNITS.update({_p: 1000**_exp, _p + "b": 1000**_exp})  # SI, as disks and `10k`
    _SIZE_UNITS.update({_p + "i": 1024**_exp, _p + "ib": 1024**_exp})  # IEC


def _number(value: object) -> float | None:
    # bool is an int subclass; `true` as a duration is a typo, not 1 second.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def parse_duration(value: object) -> float:
    """`500ms`, `2s`, `1m`, `1h` or a bare number of seconds -> seconds as a float."""
    seconds = _number(value)
    if seconds is None and isinstance(value, str) and (m := _DURATION.fullmatch(value.strip())):
        seconds = float(m[1]) * _DURATION_UNITS[(m[2] or "s").lower()]
    if seconds is None:
        raise ValueError(f"expected a duration like 500ms, 2s or 1m, got {value!r}")
    if seconds < 0:
        raise ValueError(f"duration must be >= 0, got {value!r}")
    return seconds


def parse_size(value: object) -> int:
    """`512`, `64KiB`, `10MB`, `1GiB` -> bytes."""
    size: Fraction | None = None
    if (number := _number(value)) is not None:
        size = Fraction(number)
    elif isinstance(value, str) and (m := _SIZE.fullmatch(value.strip())):
        if (unit := _SIZE_UNITS.get(m[2].lower())) is not None:
            size = Fraction(m[1]) * unit
    if size is None:
        raise ValueError(f"expected a size like 512, 64KiB or 10MB, got {value!r}")
    if size < 0:
        raise ValueError(f"size must be >= 0, got {value!r}")
    if size.denominator != 1:
        raise ValueError(f"size must be a whole number of bytes, got {value!r}")
    return int(size)


_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token; cookie names too


def _name(value: str) -> str:
    if not _NAME.fullmatch(value):
        raise ValueError(f"invalid name {value!r}: use only letters, digits, '_', '.' and '-'")
    return value


def _token(value: str | None) -> str | None:
    if value is not None and not _TOKEN.fullmatch(value):
        raise ValueError(f"{value!r} is not a valid HTTP header or cookie name")
    return value


def _listen(value: object) -> str:
    text = value if isinstance(value, str) else ""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        bare = host[1:-1]
    else:
        bare = "" if ":" in host else host  # unbracketed IPv6 is ambiguous with the port
    if not (sep and bare and port.isdigit() and int(port) <= 65535):
        raise ValueError(f"expected host:port such as 127.0.0.1:8080 or [::1]:8080, got {value!r}")
    return text


def _endpoint(value: str) -> str:
    try:
        parts = urlsplit(value)
        # .port raises for a port that is not a number in 0..65535; none at all means 80.
        ok = parts.scheme == "http" and bool(parts.hostname) and parts.port != 0
    except ValueError:
        ok = False
    if not ok or parts.username:
        raise ValueError(f"expected an endpoint like http://127.0.0.1:9001, got {value!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"endpoint {value!r} must not have a path or query")
    return value


def _host(value: str | None) -> str | None:
    if value is not None and not _NAME.fullmatch(value):
        raise ValueError(f"expected a host name without scheme, port or path, got {value!r}")
    return value


def _path_prefix(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"must start with '/', got {value!r}")
    return value


Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]
_Timeout = Annotated[Duration, Field(gt=0)]
_Name = Annotated[str, AfterValidator(_name)]
_Token = Annotated[str | None, AfterValidator(_token)]
_Listen = Annotated[str, BeforeValidator(_listen)]
_Weight = Annotated[int, Strict(), Field(ge=0)]  # `true` is not a weight


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class AdminConfig(_Frozen):
    listen: _Listen = "127.0.0.1:9901"
    # A file holding the bearer token; required when `listen` is not a loopback address
    # (SPLITPROXY_ADMIN_TOKEN in the environment does as well).
    token_file: str | None = None


class Match(_Frozen):
    host: Annotated[str | None, AfterValidator(_host)] = None  # exact, case-insensitive
    path_prefix: Annotated[str, AfterValidator(_path_prefix)] = "/"


class Sticky(_Frozen):
    pin_header: _Token = "X-Splitproxy-Version"
    hash_header: _Token = None
    cookie: _Token = None


class VersionConfig(_Frozen):
    endpoints: tuple[Annotated[str, AfterValidator(_endpoint)], ...] = Field(min_length=1)


class Route(_Frozen):
    name: _Name
    match: Match = Match()
    versions: dict[_Name, VersionConfig] = Field(min_length=1)
    weights: dict[str, _Weight]  # every key a version; each >= 0; total > 0
    sticky: Sticky = Sticky()

    @field_validator("weights")
    @classmethod
    def _known_versions(cls, weights: dict[str, int], info: ValidationInfo) -> dict[str, int]:
        versions = info.data.get("versions")
        if versions is None:  # already reported as its own error
            return weights
        known = ", ".join(versions)
        problems: list[_Problem] = [
            ((key,), f"unknown version {key!r} (versions: {known})")
            for key in weights
            if key not in versions
        ]
        if not problems and sum(weights.values()) <= 0:
            problems.append(((), "total weight must be > 0"))
        if problems:
            raise _Located(problems)
        return weights


class Timeouts(_Frozen):
    connect: _Timeout = 2.0
    response_header: _Timeout = 30.0
    client_header: _Timeout = 10.0
    idle: _Timeout = 60.0
    drain: _Timeout = 30.0  # graceful shutdown: how long in-flight requests may finish


class Limits(_Frozen):
    max_header: Annotated[Size, Field(ge=1024)] = 64 * 1024
    max_body: Size | None = None


class Health(_Frozen):
    """Passive health checking (outlier detection), as Envoy's: eject failing endpoints."""

    consecutive_failures: Annotated[int, Strict(), Field(ge=1)] = 5
    base_ejection: _Timeout = 10.0  # doubled on each repeat ejection ...
    max_ejection: _Timeout = 300.0  # ... up to this
    min_healthy: Annotated[int, Strict(), Field(ge=0)] = 1  # never eject below this many


class Config(_Frozen):
    listen: _Listen = "127.0.0.1:8080"
    admin: AdminConfig = AdminConfig()
    routes: tuple[Route, ...] = Field(min_length=1)
    timeouts: Timeouts = Timeouts()
    limits: Limits = Limits()
    health: Health = Health()

    @field_validator("routes")
    @classmethod
    def _unique_route_names(cls, routes: tuple[Route, ...]) -> tuple[Route, ...]:
        first: dict[str, int] = {}
        problems: list[_Problem] = []
        for i, route in enumerate(routes):
            if (j := first.setdefault(route.name, i)) != i:
                problems.append(((i, "name"), f"duplicate route name (also routes[{j}])"))
        if problems:
            raise _Located(problems)
        return routes

    @model_validator(mode="after")
    def _distinct_ports(self) -> Config:
        # Port 0 asks the OS for a free port, so the two can never collide.
        if self.admin.listen == self.listen and not self.listen.endswith(":0"):
            raise _Located([(("admin", "listen"), f"same address as listen ({self.listen})")])
        return self


# Pydantic's wording is written for programmers; these read better in an operator's terminal.
_MESSAGES = {
    "missing": "required",
    "too_short": "must not be empty",
    "extra_forbidden": "unknown key",
    "string_type": "expected a string",
    "int_type": "expected an integer",
    "int_parsing": "expected an integer",
    "int_from_float": "expected an integer",
    "float_type": "expected a number",
    "dict_type": "expected a mapping",
    "model_type": "expected a mapping",
    "model_attributes_type": "expected a mapping",
    "tuple_type": "expected a list",
}


def _message(error: ErrorDetails) -> str:
    if error["type"] in _MESSAGES:
        return _MESSAGES[error["type"]]
    ctx = error.get("ctx", {})
    if error["type"] in ("greater_than", "greater_than_equal"):
        return f"must be > {ctx['gt']}" if "gt" in ctx else f"must be >= {ctx['ge']}"
    return str(error["msg"]).removeprefix("Value error, ")


def _locate(root: yaml.Node, loc: tuple[str | int, ...]) -> tuple[int, str]:
    """Follow `loc` through the YAML node tree: (1-based line, `routes[0].weights` path)."""
    node: yaml.Node | None = root
    line = root.start_mark.line
    path = ""
    for part in loc:
        if part == "[key]":  # pydantic's "the key itself failed": the key node is already found
            continue
        in_list = isinstance(node, yaml.SequenceNode) or (node is None and isinstance(part, int))
        path += f"[{part}]" if in_list else f".{part}"
        if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line
        elif isinstance(node, yaml.MappingNode):
            found = next(((k, v) for k, v in node.value if k.value == str(part)), None)
            node = found[1] if found else None
            line = found[0].start_mark.line if found else line  # a missing key: its parent
        else:
            node = None
    return line + 1, path.removeprefix(".")


def _duplicate_keys(node: yaml.Node) -> Iterator[tuple[int, str]]:
    # PyYAML keeps the last of two equal keys without a word; that hides a real typo.
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value in seen:
                yield key.start_mark.line + 1, f"duplicate key {key.value!r}"
            seen.add(str(key.value))
            yield from _duplicate_keys(value)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            yield from _duplicate_keys(item)


def _compose(name: str, text: str) -> tuple[yaml.Node, object]:
    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else 1
        problem = exc.problem or str(exc)
        if exc.context and problem.startswith("but "):  # "but found another document" needs it
            problem = f"{exc.context}, {problem}"
        raise ConfigError([f"{name}:{line}: yaml error: {problem}"]) from None
    except yaml.YAMLError as exc:  # e.g. a control character; no line to point at
        raise ConfigError([f"{name}:1: yaml error: {str(exc).splitlines()[0]}"]) from None
    if node is None:  # nothing, or only comments
        raise ConfigError([f"{name}:1: config file is empty"])
    return node, data


def load(path: str | Path) -> Config:
    """Read, parse and validate one config file; every problem is one `file:line: ...` line."""
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError([f"{name}: cannot read config: {reason}"]) from None
    root, data = _compose(name, text)
    if dup := list(_duplicate_keys(root)):
        raise ConfigError([f"{name}:{line}: {msg}" for line, msg in dup])
    if not isinstance(data, dict):
        kind = "a list" if isinstance(data, list) else f"{type(data).__name__} {data!r}"
        line = root.start_mark.line + 1
        raise ConfigError([f"{name}:{line}: the top level must be a mapping, not {kind}"])
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        found: list[tuple[int, str, str]] = []
        for error in exc.errors():
            cause = error.get("ctx", {}).get("error")
            if isinstance(cause, _Located):
                found += [(*_locate(root, (*error["loc"], *w)), m) for w, m in cause.problems]
            elif not (error["type"] == "too_short" and error["input"]):
                # A list that is too short only because its items failed is no news.
                found.append((*_locate(root, error["loc"]), _message(error)))
        found.sort(key=lambda e: e[0])  # stable: same line keeps pydantic's field order
        errors = [f"{name}:{line}: {field}: {msg}" for line, field, msg in found]
        raise ConfigError(errors) from None


def _percent(weight: int, total: int) -> str:
    share = 100 * weight / total
    return "<0.1%" if 0 < share < 0.05 else f"{share:.1f}%"


def describe(config: Config) -> str:
    """Human summary of what the proxy would do, for `splitproxy check`."""
    lines = [f"listen {config.listen}, admin {config.admin.listen}"]
    for route in config.routes:
        host = route.match.host or "any host"
        lines.append(f"route {route.name}: {host}, path prefix {route.match.path_prefix}")
        total = sum(route.weights.values())
        shares = {
            v: f"{v} {route.weights.get(v, 0)} ({_percent(route.weights.get(v, 0), total)})"
            for v in route.versions
        }
        width = max(map(len, shares.values()))
        for version, cfg in route.versions.items():
            lines.append(f"  {shares[version]:<{width}}  {', '.join(cfg.endpoints)}")
        sticky = route.sticky
        lines.append(
            f"  sticky: pin header {sticky.pin_header or '-'}, hash header "
            f"{sticky.hash_header or '-'}, cookie {sticky.cookie or '-'}"
        )
    return "\n".join(lines)
