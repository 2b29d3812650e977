"""`listen` as one address or several listeners, and the TLS settings: what loads, and what is
refused with the file and the reason."""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme

from splitproxy.config.models import ConfigError, describe, load
from splitproxy.routing.table import build
from tests.support.tls import issue, write_ca

ROUTES = """\
routes:
  - name: shop
    versions:
      stable: {endpoints: ["http://127.0.0.1:9001"]}
    weights: {stable: 1}
"""


def write(tmp_path: Path, listen: str, routes: str = ROUTES) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(listen + routes)
    return path


def errors(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(path)
    return [e.split(": ", 1)[1] for e in info.value.errors]


@pytest.fixture
def site(tmp_path: Path) -> tuple[str, str]:
    files = issue(trustme.CA(), tmp_path, "site", "shop.example")
    return str(files.cert), str(files.key)


def test_one_address_is_one_plaintext_listener(tmp_path: Path) -> None:
    config = load(write(tmp_path, "listen: 127.0.0.1:8080\n"))
    (listener,) = config.listen
    assert (listener.address, listener.tls, listener.scheme) == ("127.0.0.1:8080", None, "http")
    assert describe(config).startswith("listen 127.0.0.1:8080, admin")


def test_several_listeners_plaintext_and_tls(tmp_path: Path, site: tuple[str, str]) -> None:
    cert, key = site
    config = load(write(tmp_path, f"""\
listen:
  - 127.0.0.1:8080
  - address: 127.0.0.1:8081
    redirect_to_https: true
  - address: 127.0.0.1:8443
    tls:
      certificates: [{{cert: {cert}, key: {key}, names: [shop.example, "*.shop.example"]}}]
"""))
    assert [lst.scheme for lst in config.listen] == ["http", "http", "https"]
    tls = config.listen[2].tls
    assert tls is not None and tls.certificates[0].names == ("shop.example", "*.shop.example")
    assert str(tls.verify) == "none" and str(tls.min_version) == "1.2"
    assert describe(config).startswith(
        "listen 127.0.0.1:8080, 127.0.0.1:8081 (redirect to https), 127.0.0.1:8443 (tls),")


def test_a_certificate_that_does_not_load_is_refused_with_its_file(
        tmp_path: Path, site: tuple[str, str]) -> None:
    cert, key = site
    other = issue(trustme.CA(), tmp_path, "other", "x.example")
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    for pem, pem_key in ((str(bad), key), (cert, str(other.key)), (str(tmp_path / "no.pem"), key)):
        problems = errors(write(tmp_path, f"""\
listen:
  - address: 127.0.0.1:8443
    tls: {{certificates: [{{cert: {pem}, key: {pem_key}}}]}}
"""))
        assert len(problems) == 1 and pem in problems[0], problems


@pytest.mark.parametrize(("listen", "expected"), [
    ("listen:\n  - address: 127.0.0.1:8080\n    redirect_to_https: true\n",
     "redirect_to_https needs a listener with tls to redirect to"),
    ("listen: [127.0.0.1:8080, 127.0.0.1:8080]\n", "address 127.0.0.1:8080 listed twice"),
    ("listen: []\n", "must not be empty"),
    ("listen:\n  - address: 127.0.0.1:9901\nadmin: {listen: 127.0.0.1:9901}\n",
     "same address as listen (127.0.0.1:9901)"),
])
def test_listener_rules(tmp_path: Path, listen: str, expected: str) -> None:
    problems = errors(write(tmp_path, listen))
    assert any(expected in p for p in problems), problems


def test_client_auth_needs_a_client_ca(tmp_path: Path, site: tuple[str, str]) -> None:
    cert, key = site
    problems = errors(write(tmp_path, f"""\
listen:
  - address: 127.0.0.1:8443
    tls: {{certificates: [{{cert: {cert}, key: {key}}}], client_auth: optional}}
"""))
    assert any("client_auth optional needs a client_ca" in p for p in problems), problems


def test_https_endpoints_and_their_tls(tmp_path: Path) -> None:
    ca_file = write_ca(trustme.CA(), tmp_path)
    config = load(write(tmp_path, "", f"""\
routes:
  - name: shop
    versions:
      stable:
        endpoints: ["https://api.internal", "https://10.0.0.2:8443", "http://10.0.0.3"]
        tls: {{ca_file: {ca_file}, server_name: api.internal}}
    weights: {{stable: 1}}
"""))
    endpoints = build(config).routes[0].endpoints["stable"]
    assert [(e.host, e.port, e.tls is not None) for e in endpoints] == [
        ("api.internal", 443, True), ("10.0.0.2", 8443, True), ("10.0.0.3", 80, False)]
    assert endpoints[0].tls is not None and endpoints[0].tls.server_name == "api.internal"


def test_a_ca_file_that_is_not_one_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("nothing")
    problems = errors(write(tmp_path, "", f"""\
routes:
  - name: shop
    versions:
      stable: {{endpoints: ["https://api.internal"], tls: {{ca_file: {bad}}}}}
    weights: {{stable: 1}}
"""))
    assert len(problems) == 1 and f"{bad}: not a CA bundle" in problems[0], problems


def test_an_identity_pin_names_a_version(tmp_path: Path) -> None:
    problems = errors(write(tmp_path, "", """\
routes:
  - name: shop
    versions:
      stable: {endpoints: ["http://127.0.0.1:9001"]}
    weights: {stable: 1}
    sticky: {identity_pins: {"CN=qa-bot": canary}}
"""))
    assert problems == ["routes[0].sticky.identity_pins.CN=qa-bot: unknown version 'canary'"], \
        problems
