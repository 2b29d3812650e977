"""`versions.<name>.protocol` and `routes[].grpc.error_codes`: what loads, what reaches the
routing table, and what is refused with the file, the line and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from splitproxy.config.grpc import DEFAULT_ERROR_CODES, GrpcCode, UpstreamProtocol
from splitproxy.config.models import ConfigError, load
from splitproxy.dataplane.http.probe import checks_of
from splitproxy.routing.table import build

# Line numbers matter: the cases below point at them.
BASE = """\
routes:
  - name: shop
    versions:
      stable: {endpoints: ["http://127.0.0.1:9001"]}
      canary: {endpoints: ["http://127.0.0.1:9002"], protocol: h2}
    weights: {stable: 90, canary: 10}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def errors(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(path)
    return info.value.errors


def test_protocol_defaults_to_http1_and_reaches_the_endpoints(tmp_path: Path) -> None:
    config = load(write(tmp_path, BASE))
    versions = config.routes[0].versions
    assert versions["stable"].protocol is UpstreamProtocol.HTTP1
    assert versions["canary"].protocol is UpstreamProtocol.H2
    entry = build(config).routes[0]
    assert [ep.protocol for ep in entry.endpoints["stable"]] == ["http1"]
    assert [ep.protocol for ep in entry.endpoints["canary"]] == ["h2"]


def test_auto_is_for_https_endpoints(tmp_path: Path) -> None:
    text = BASE.replace('"http://127.0.0.1:9002"], protocol: h2',
                        '"https://127.0.0.1:9002"], protocol: auto')
    entry = build(load(write(tmp_path, text))).routes[0]
    (endpoint,) = entry.endpoints["canary"]
    assert endpoint.protocol == "auto" and endpoint.tls is not None


def test_auto_on_a_plaintext_endpoint_is_refused_at_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, BASE.replace("protocol: h2", "protocol: auto"))
    assert errors(path) == [
        f"{path}:5: routes[0].versions.canary.protocol: auto chooses by TLS ALPN: only for "
        "https:// endpoints, not http://127.0.0.1:9002 (use h2 or http1)"]


def test_an_unknown_protocol_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, BASE.replace("protocol: h2", "protocol: http2"))
    (problem,) = errors(path)
    assert problem.startswith(f"{path}:5: routes[0].versions.canary.protocol: ")
    assert "'http1', 'h2' or 'auto'" in problem


def test_grpc_error_codes_default_to_the_server_errors(tmp_path: Path) -> None:
    config = load(write(tmp_path, BASE))
    assert config.routes[0].grpc.error_codes == DEFAULT_ERROR_CODES
    assert set(DEFAULT_ERROR_CODES) == {
        GrpcCode.UNKNOWN, GrpcCode.DEADLINE_EXCEEDED, GrpcCode.UNIMPLEMENTED,
        GrpcCode.INTERNAL, GrpcCode.UNAVAILABLE, GrpcCode.DATA_LOSS}
    assert build(config).routes[0].grpc_error_codes == frozenset({2, 4, 12, 13, 14, 15})


def test_grpc_error_codes_by_name_or_number(tmp_path: Path) -> None:
    config = load(write(tmp_path, BASE + "    grpc: {error_codes: [unavailable, 8, \"13\"]}\n"))
    assert config.routes[0].grpc.error_codes == (
        GrpcCode.UNAVAILABLE, GrpcCode.RESOURCE_EXHAUSTED, GrpcCode.INTERNAL)
    assert build(config).routes[0].grpc_error_codes == frozenset({8, 13, 14})


@pytest.mark.parametrize(("codes", "message"), [
    ("[UNAVAILABLE, NOPE]", "error_codes[1]: unknown gRPC status code 'NOPE'"),
    ("[17]", "error_codes[0]: gRPC status codes are 0..16, got 17"),
    ("[OK]", "error_codes[0]: OK is never an error"),
    ("[true]", "error_codes[0]: expected a gRPC status code name or number, got True"),
])
def test_bad_grpc_error_codes_are_refused_at_their_line(
        tmp_path: Path, codes: str, message: str) -> None:
    path = write(tmp_path, BASE + f"    grpc:\n      error_codes: {codes}\n")
    (problem,) = errors(path)
    assert problem.startswith(f"{path}:8: routes[0].grpc.{message}"), problem


def test_a_grpc_health_check_needs_an_http2_version(tmp_path: Path) -> None:
    h2_check = BASE.replace("protocol: h2}", "protocol: h2, health_check: {grpc_service: ''}}")
    config = load(write(tmp_path, h2_check))
    check = config.routes[0].versions["canary"].health_check
    assert check is not None and check.grpc_service == ""
    path = write(tmp_path, BASE + "    health_check: {grpc_service: orders}\n")
    (problem,) = errors(path)
    assert problem == (
        f"{path}:7: routes[0].health_check.grpc_service: a gRPC health check needs HTTP/2: "
        "version stable has protocol http1 (set protocol: h2)"), problem


def test_an_auto_versions_probe_reaches_its_endpoints_health(tmp_path: Path) -> None:
    text = BASE.replace('"http://127.0.0.1:9002"], protocol: h2',
                        '"https://127.0.0.1:9002"], protocol: auto, '
                        'health_check: {path: /healthz}')
    config = load(write(tmp_path, text))
    (endpoint,) = checks_of(config)
    assert endpoint in build(config).routes[0].endpoints["canary"]  # the pool's key


def test_a_mirror_on_a_route_with_an_http2_version_is_refused_at_its_line(
        tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "    mirror: {to: canary}\n")
    (problem,) = errors(path)
    assert problem == (
        f"{path}:7: routes[0].mirror: shadow traffic goes over HTTP/1.1: version canary has "
        "protocol h2 (mirror only routes whose versions all speak http1)"), problem


def test_a_mirror_step_on_a_route_with_an_http2_version_is_refused_at_its_line(
        tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "    rollout:\n      canary: canary\n      steps:\n"
                 "        - set_weight: 10\n        - set_mirror: 20\n")
    (problem,) = errors(path)
    assert problem.startswith(f"{path}:11: routes[0].rollout.steps[1].set_mirror: shadow "
                              "traffic goes over HTTP/1.1: version canary has protocol h2"), problem
