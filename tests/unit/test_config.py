"""config.load(): typed values from YAML, and every problem as `file:line: field.path: message`."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest

from splitproxy.config.models import Config, ConfigError, Route, VersionConfig, describe, load
from splitproxy.config.units import parse_duration, parse_size

FIXTURES = Path(__file__).parents[1] / "fixtures"

# Line numbers matter: the cases below point at them.
BASE = """\
listen: 127.0.0.1:8080
admin: {listen: 127.0.0.1:9901}
routes:
  - name: shop
    match: {host: shop.example.com, path_prefix: /}
    versions:
      stable: {endpoints: ["http://127.0.0.1:9001", "http://127.0.0.1:9003"]}
      canary: {endpoints: ["http://127.0.0.1:9002"]}
    sticky: {pin_header: X-Splitproxy-Version, hash_header: X-User-Id, cookie: splitproxy-shop}
    weights:
      stable: 90
      canary: 10
timeouts: {connect: 2s, response_header: 30s, client_header: 10s, idle: 60s}
limits: {max_header: 64KiB, max_body: 10MiB}
"""


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def errors_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(info.value) == "\n".join(info.value.errors)
    return info.value.errors


def edited(old: str, new: str) -> str:
    assert BASE.count(old) == 1, f"{old!r} must occur once in BASE"
    return BASE.replace(old, new)


def test_reference_config_loads_typed_values(tmp_path: Path) -> None:
    config = load(write(tmp_path, BASE))
    assert config.listen[0].address == "127.0.0.1:8080"
    assert config.admin.listen == "127.0.0.1:9901"
    (route,) = config.routes
    assert route.name == "shop"
    assert route.match.host == "shop.example.com"
    assert route.versions["stable"].endpoints == ("http://127.0.0.1:9001", "http://127.0.0.1:9003")
    assert route.weights == {"stable": 90, "canary": 10}
    assert route.sticky.hash_header == "X-User-Id"
    assert route.sticky.cookie == "splitproxy-shop"
    assert config.timeouts.connect == 2.0
    assert config.timeouts.drain == 30.0  # default
    assert config.limits.max_header == 64 * 1024
    assert config.limits.max_body == 10 * 1024 * 1024


def test_minimal_config_gets_defaults() -> None:
    config = load(FIXTURES / "config_minimal.yaml")
    assert config.listen[0].address == "127.0.0.1:8080"
    assert config.admin.listen == "127.0.0.1:9901"
    assert config.routes[0].match.host is None
    assert config.routes[0].match.path_prefix == "/"
    assert config.routes[0].sticky.pin_header is None  # off unless configured
    assert config.routes[0].sticky.pin_token is None
    assert config.routes[0].sticky.cookie_max_age == 86400
    assert config.routes[0].preview_header is None
    assert config.routes[0].sticky.hash_header is None
    assert config.timeouts.response_header == 30.0
    assert config.limits.max_body is None


def test_config_is_frozen(tmp_path: Path) -> None:
    config = load(write(tmp_path, BASE))
    with pytest.raises(pydantic.ValidationError):
        config.listen = "0.0.0.0:80"  # type: ignore[misc,assignment]


def test_version_missing_from_weights_is_kept_out_of_the_dict(tmp_path: Path) -> None:
    config = load(write(tmp_path, edited("      canary: 10\n", "")))
    assert config.routes[0].weights == {"stable": 90}


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("127.0.0.1:8080", "'[::1]:8080'"),
        ("127.0.0.1:8080", "0.0.0.0:0"),
        ("127.0.0.1:9901", "localhost:65535"),
        ('"http://127.0.0.1:9002"', '"http://[::1]:9002/"'),
        ('"http://127.0.0.1:9002"', '"http://canary.internal"'),
        ("cookie: splitproxy-shop", "cookie: null"),
        ("match: {host: shop.example.com, path_prefix: /}", "match: {path_prefix: /api/}"),
        ("connect: 2s", "connect: 500ms"),
        ("connect: 2s", "connect: 0.25"),
        ("max_body: 10MiB", "max_body: null"),
        ("      canary: 10", "      canary: 0"),
    ],
)
def test_valid_variants_load(tmp_path: Path, old: str, new: str) -> None:
    load(write(tmp_path, edited(old, new)))


ERROR_CASES = [
    # (id, old text in BASE, new text, expected "line: field: message" lines)
    ("negative weight", "canary: 10", "canary: -5", ["12: routes[0].weights.canary: must be >= 0"]),
    (
        "unknown version in weights",
        "canary: 10",
        "canray: 10",
        ["12: routes[0].weights.canray: unknown version 'canray' (versions: stable, canary)"],
    ),
    (
        "zero total",
        "stable: 90\n      canary: 10",
        "stable: 0\n      canary: 0",
        ["10: routes[0].weights: total weight must be > 0"],
    ),
    (
        "weight finer than 0.01",
        "canary: 10",
        "canary: 1.505",
        ["12: routes[0].weights.canary: weights go down to 0.01, got 1.505"],
    ),
    (
        "weight bool",
        "canary: 10",
        "canary: yes",
        ["12: routes[0].weights.canary: expected a number, got str"],
    ),
    ("unknown key top level", "limits:", "limit:", ["14: limit: unknown key"]),
    (
        "unknown key admin",
        "{listen: 127.0.0.1:9901}",
        "{listen: 127.0.0.1:9901, port: 1}",
        ["2: admin.port: unknown key"],
    ),
    ("unknown key route", "    sticky:", "    stiky:", ["9: routes[0].stiky: unknown key"]),
    (
        "unknown key match",
        "path_prefix: /}",
        "path_prefix: /, method: GET}",
        ["5: routes[0].match.method: unknown key"],
    ),
    (
        "unknown key version",
        '["http://127.0.0.1:9002"]}',
        '["http://127.0.0.1:9002"], weight: 5}',
        ["8: routes[0].versions.canary.weight: unknown key"],
    ),
    (
        "unknown key sticky",
        "cookie: splitproxy-shop}",
        "cookies: splitproxy-shop}",
        ["9: routes[0].sticky.cookies: unknown key"],
    ),
    (
        "unknown key timeouts",
        "idle: 60s}",
        "idle: 60s, read: 1s}",
        ["13: timeouts.read: unknown key"],
    ),
    (
        "missing field: parent line",
        "    weights:\n      stable: 90\n      canary: 10\n",
        "",
        ["4: routes[0].weights: required"],
    ),
    ("routes missing", "routes:", "routez:", ["1: routes: required", "3: routez: unknown key"]),
    (
        "listen without port",
        "listen: 127.0.0.1:8080",
        "listen: localhost",
        ["1: listen: expected host:port such as 127.0.0.1:8080 or [::1]:8080, got 'localhost'"],
    ),
    (
        "listen port out of range",
        "listen: 127.0.0.1:8080",
        "listen: 127.0.0.1:70000",
        [
            "1: listen: "
            "expected host:port such as 127.0.0.1:8080 or [::1]:8080, got '127.0.0.1:70000'"
        ],
    ),
    (
        "listen unbracketed ipv6",
        "listen: 127.0.0.1:8080",
        "listen: '::1:8080'",
        ["1: listen: expected host:port such as 127.0.0.1:8080 or [::1]:8080, got '::1:8080'"],
    ),
    (
        "admin same as listen",
        "{listen: 127.0.0.1:9901}",
        "{listen: 127.0.0.1:8080}",
        ["2: admin.listen: same address as listen (127.0.0.1:8080)"],
    ),
    (
        "route name",
        "name: shop",
        "name: my shop",
        ["4: routes[0].name: invalid name 'my shop': use only letters, digits, '_', '.' and '-'"],
    ),
    (
        "route name empty",
        "name: shop",
        "name: ''",
        ["4: routes[0].name: invalid name '': use only letters, digits, '_', '.' and '-'"],
    ),
    (
        "version name",
        "      canary: {",
        "      can/ary: {",
        [
            "8: routes[0].versions.can/ary: invalid name 'can/ary': "
            "use only letters, digits, '_', '.' and '-'"
        ],
    ),
    (
        "no versions",
        '    versions:\n      stable: {endpoints: ["http://127.0.0.1:9001", "http://127.0.0.1:9003"]}\n'
        '      canary: {endpoints: ["http://127.0.0.1:9002"]}\n',
        "    versions: {}\n",
        ["6: routes[0].versions: must not be empty"],
    ),
    (
        "no endpoints",
        '{endpoints: ["http://127.0.0.1:9002"]}',
        "{endpoints: []}",
        ["8: routes[0].versions.canary.endpoints: must not be empty"],
    ),
    (
        "endpoint ftp",
        '"http://127.0.0.1:9002"',
        '"ftp://127.0.0.1:9002"',
        [
            "8: routes[0].versions.canary.endpoints[0]: "
            "expected an endpoint like http://127.0.0.1:9001, got 'ftp://127.0.0.1:9002'"
        ],
    ),
    (
        "endpoint path",
        '"http://127.0.0.1:9003"',
        '"http://127.0.0.1:9003/api"',
        [
            "7: routes[0].versions.stable.endpoints[1]: "
            "endpoint 'http://127.0.0.1:9003/api' must not have a path or query"
        ],
    ),
    (
        "endpoint query",
        '"http://127.0.0.1:9002"',
        '"http://127.0.0.1:9002?x=1"',
        [
            "8: routes[0].versions.canary.endpoints[0]: "
            "endpoint 'http://127.0.0.1:9002?x=1' must not have a path or query"
        ],
    ),
    (
        "endpoint bad port",
        '"http://127.0.0.1:9002"',
        '"http://127.0.0.1:99999"',
        [
            "8: routes[0].versions.canary.endpoints[0]: "
            "expected an endpoint like http://127.0.0.1:9001, got 'http://127.0.0.1:99999'"
        ],
    ),
    (
        "pin header not a token",
        "pin_header: X-Splitproxy-Version",
        "pin_header: 'X Version'",
        ["9: routes[0].sticky.pin_header: 'X Version' is not a valid HTTP header or cookie name"],
    ),
    (
        "pin token too short",
        "pin_header: X-Splitproxy-Version",
        "pin_header: X-Splitproxy-Version, pin_token: abc",
        ["9: routes[0].sticky.pin_token: must be at least 16 characters "
         "(e.g. `openssl rand -hex 16`)"],
    ),
    (
        "pin token with a colon",
        "pin_header: X-Splitproxy-Version",
        "pin_header: X-Splitproxy-Version, pin_token: 'abc:0123456789abcdef'",
        ["9: routes[0].sticky.pin_token: use only letters, digits and !#$%&'*+.^_`|~- "
         "(no spaces or ':')"],
    ),
    (
        "cookie max age",
        "cookie: splitproxy-shop",
        "cookie: splitproxy-shop, cookie_max_age: 0s",
        ["9: routes[0].sticky.cookie_max_age: must be > 0"],
    ),
    (
        "cookie not a token",
        "cookie: splitproxy-shop",
        "cookie: 'a;b'",
        ["9: routes[0].sticky.cookie: 'a;b' is not a valid HTTP header or cookie name"],
    ),
    (
        "path prefix",
        "path_prefix: /}",
        "path_prefix: api}",
        ["5: routes[0].match.path_prefix: must start with '/', got 'api'"],
    ),
    (
        "host with port",
        "host: shop.example.com,",
        "host: 'shop.example.com:80',",
        [
            "5: routes[0].match.host: "
            "expected a host name without scheme, port or path, got 'shop.example.com:80'"
        ],
    ),
    ("timeout zero", "connect: 2s", "connect: 0s", ["13: timeouts.connect: must be > 0"]),
    (
        "timeout negative",
        "idle: 60s",
        "idle: -1s",
        ["13: timeouts.idle: duration must be >= 0, got '-1s'"],
    ),
    (
        "timeout garbage",
        "idle: 60s",
        "idle: soon",
        ["13: timeouts.idle: expected a duration like 500ms, 2s or 1m, got 'soon'"],
    ),
    (
        "max_header too small",
        "max_header: 64KiB",
        "max_header: 512B",
        ["14: limits.max_header: must be >= 1024"],
    ),
    (
        "size garbage",
        "max_body: 10MiB",
        "max_body: lots",
        ["14: limits.max_body: expected a size like 512, 64KiB or 10MB, got 'lots'"],
    ),
    (
        "versions not a mapping",
        "    versions:\n",
        "    versions: [stable, canary]\n    x:\n",
        ["6: routes[0].versions: expected a mapping", "7: routes[0].x: unknown key"],
    ),
    (
        "routes null",
        "routes:\n",
        "routes: null\nx:\n",
        ["3: routes: expected a list", "4: x: unknown key"],
    ),
    (
        "duplicate yaml key",
        "      canary: 10",
        "      canary: 10\n      canary: 20",
        ["13: duplicate key 'canary'"],
    ),
]


@pytest.mark.parametrize(
    ("old", "new", "expected"), [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES]
)
def test_error_names_file_line_field_and_reason(
    tmp_path: Path, old: str, new: str, expected: list[str]
) -> None:
    path = write(tmp_path, edited(old, new))
    assert errors_of(path) == [f"{path}:{line}" for line in expected]


def test_negative_weight_names_file_line_and_field(tmp_path: Path) -> None:
    path = write(tmp_path, edited("canary: 10", "canary: -5"))
    (error,) = errors_of(path)
    assert error.endswith("config.yaml:12: routes[0].weights.canary: must be >= 0")
    assert error.startswith(str(tmp_path))


def test_all_problems_are_reported_in_line_order(tmp_path: Path) -> None:
    text = edited("idle: 60s}", "idle: 60s, read: 1s}").replace("canary: 10", "canary: -1")
    path = write(tmp_path, text.replace("listen: 127.0.0.1:8080", "listen: nowhere"))
    errors = errors_of(path)
    assert [e.removeprefix(f"{path}:").split(":")[0] for e in errors] == ["1", "12", "13"]


def test_list_failing_only_through_its_items_is_not_also_called_empty(tmp_path: Path) -> None:
    path = write(tmp_path, edited('"http://127.0.0.1:9002"', '"ftp://127.0.0.1:9002"'))
    (error,) = errors_of(path)
    assert "endpoints[0]:" in error


def test_empty_routes_list(tmp_path: Path) -> None:
    path = write(tmp_path, "listen: 127.0.0.1:8080\nroutes: []\n")
    assert errors_of(path) == [f"{path}:2: routes: must not be empty"]


def test_duplicate_route_names(tmp_path: Path) -> None:
    route = BASE[BASE.index("  - name: shop") : BASE.index("timeouts:")]
    path = write(tmp_path, BASE.replace("timeouts:", route + "timeouts:", 1))
    assert errors_of(path) == [f"{path}:13: routes[1].name: duplicate route name (also routes[0])"]


def test_missing_route_fields_point_at_the_route(tmp_path: Path) -> None:
    path = write(tmp_path, "routes:\n  - name: a\n  - {}\n")
    assert errors_of(path) == [
        f"{path}:2: routes[0].versions: required",
        f"{path}:2: routes[0].weights: required",
        f"{path}:3: routes[1].name: required",
        f"{path}:3: routes[1].versions: required",
        f"{path}:3: routes[1].weights: required",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "1: config file is empty"),
        ("# only a comment\n\n", "1: config file is empty"),
        ("- listen: 127.0.0.1:8080\n", "1: the top level must be a mapping, not a list"),
        ("\n\njust text\n", "3: the top level must be a mapping, not str 'just text'"),
        (
            "listen: 127.0.0.1:8080\nroutes: [a\nlimits: {}\n",
            "3: yaml error: expected ',' or ']', but got ':'",
        ),
        ("listen: a\n  bad: indent\n", "2: yaml error: mapping values are not allowed here"),
        (
            "listen: 127.0.0.1:8080\n---\nlisten: 127.0.0.1:8081\n",
            "2: yaml error: expected a single document in the stream, but found another document",
        ),
        (
            'listen: 127.0.0.1:8080\nx: "\x01"\n',
            "1: yaml error: unacceptable character #x0001: special characters are not allowed",
        ),
    ],
    ids=[
        "empty",
        "comments only",
        "list",
        "scalar",
        "flow syntax",
        "indent",
        "two documents",
        "control char",
    ],
)
def test_unusable_file_is_one_clear_error(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    assert errors_of(path) == [f"{path}:{expected}"]


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    assert errors_of(path) == [f"{path}: cannot read config: No such file or directory"]


def test_directory_instead_of_file(tmp_path: Path) -> None:
    (error,) = errors_of(tmp_path)
    assert error.startswith(f"{tmp_path}: cannot read config: ")


def test_file_name_is_used_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, edited("canary: 10", "canary: -5"))
    assert errors_of(Path("config.yaml")) == [
        "config.yaml:12: routes[0].weights.canary: must be >= 0"
    ]


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("500ms", 0.5),
        ("2s", 2.0),
        ("1m", 60.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        (" 250 ms ", 0.25),
        ("2", 2.0),
        ("0.1", 0.1),
        (3, 3.0),
        (0.25, 0.25),
        (0, 0.0),
    ],
)
def test_parse_duration(value: object, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("-1s", "duration must be >= 0, got '-1s'"),
        (-2, "duration must be >= 0, got -2"),
        ("soon", "expected a duration like 500ms, 2s or 1m, got 'soon'"),
        ("1d", "expected a duration like 500ms, 2s or 1m, got '1d'"),
        ("", "expected a duration like 500ms, 2s or 1m, got ''"),
        (True, "expected a duration like 500ms, 2s or 1m, got True"),
        (None, "expected a duration like 500ms, 2s or 1m, got None"),
        (float("inf"), "expected a duration like 500ms, 2s or 1m, got inf"),
    ],
)
def test_parse_duration_rejects(value: object, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(value)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (512, 512),
        ("512", 512),
        ("512B", 512),
        ("10k", 10_000),
        ("10KB", 10_000),
        ("10MB", 10_000_000),
        ("1GB", 1_000_000_000),
        ("64KiB", 65_536),
        ("64Ki", 65_536),
        ("10MiB", 10_485_760),
        ("1GiB", 1_073_741_824),
        ("1.5KiB", 1536),
        (" 2 mib ", 2_097_152),
        (0, 0),
    ],
)
def test_parse_size(value: object, size: int) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("-1KiB", "size must be >= 0, got '-1KiB'"),
        (-5, "size must be >= 0, got -5"),
        ("0.5B", "size must be a whole number of bytes, got '0.5B'"),
        ("lots", "expected a size like 512, 64KiB or 10MB, got 'lots'"),
        ("10 XB", "expected a size like 512, 64KiB or 10MB, got '10 XB'"),
        ("KiB", "expected a size like 512, 64KiB or 10MB, got 'KiB'"),
        (False, "expected a size like 512, 64KiB or 10MB, got False"),
    ],
)
def test_parse_size_rejects(value: object, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_size(value)
    assert str(info.value) == message


def test_models_validate_without_load() -> None:
    """Code that builds a Config directly gets the same checks, as pydantic errors."""
    version = VersionConfig(endpoints=("http://127.0.0.1:9001",))
    with pytest.raises(pydantic.ValidationError, match="unknown version 'canary'"):
        Route(name="r", versions={"stable": version}, weights={"canary": 1})
    route = Route(name="r", versions={"stable": version}, weights={"stable": 1})
    with pytest.raises(pydantic.ValidationError, match="duplicate route name"):
        Config(routes=(route, route))


def test_describe_shows_routes_shares_and_sticky(tmp_path: Path) -> None:
    text = edited("stable: 90\n      canary: 10", "stable: 999\n      canary: 1")
    out = describe(load(write(tmp_path, text)))
    assert out.splitlines() == [
        "listen 127.0.0.1:8080, admin 127.0.0.1:9901",
        "route shop: shop.example.com, path prefix /",
        "  stable 999 (99.9%)  http://127.0.0.1:9001, http://127.0.0.1:9003",
        "  canary 1 (0.1%)     http://127.0.0.1:9002",
        "  sticky: pin header X-Splitproxy-Version, hash header X-User-Id, cookie splitproxy-shop",
    ]


def test_describe_version_without_weight_and_no_host() -> None:
    version = VersionConfig(endpoints=("http://127.0.0.1:9001",))
    route = Route(name="r", versions={"blue": version, "green": version}, weights={"blue": 19999})
    out = describe(Config(routes=(route,)))
    assert "route r: any host, path prefix /" in out
    assert "  blue 19999 (100.0%)" in out
    assert "  green 0 (0.0%)" in out
    assert "hash header -, cookie -" in out


def test_describe_tiny_share_is_not_shown_as_zero() -> None:
    version = VersionConfig(endpoints=("http://127.0.0.1:9001",))
    route = Route(name="r", versions={"a": version, "b": version}, weights={"a": 9999, "b": 1})
    assert "b 1 (<0.1%)" in describe(Config(routes=(route,)))
