"""`splitproxy health -c CONFIG`: does the proxy this config describes answer? For a
container's HEALTHCHECK and exec probes: the address is the config's `admin.listen`, never a
port written into the image.

Only the `admin:` section is read: after a bad edit the running proxy goes on with its last
good config (and `admin.listen` changes only with a restart), so the rest of the file being
broken must not make a serving proxy look unhealthy.

Exit codes follow Docker's HEALTHCHECK: 0 healthy, 1 anything else (Docker reserves 2).
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from splitproxy.cli.client import TOKEN_ENV
from splitproxy.config.models import AdminConfig, ConfigError
from splitproxy.config.yamlload import load_model

HEALTHY, UNHEALTHY = 0, 1
# Who listens on every address is reached on loopback.
_ANY_ADDRESS = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]", "::": "[::1]"}


class _AdminOnly(BaseModel):
    """A config file seen only through its `admin:` section."""

    model_config = ConfigDict(extra="ignore")
    admin: AdminConfig = AdminConfig()


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "health", help="exit 0 when the proxy of this config answers /healthz (for a "
        "container HEALTHCHECK), else 1", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", required=True, type=Path,
                   help="the config the proxy runs with: its admin.listen is asked")
    p.add_argument("--ready", action="store_true",
                   help="ask /readyz (config loaded, listening, not draining) instead of "
                        "/healthz (alive)")
    p.add_argument("--timeout", type=float, default=3.0,
                   help="seconds to wait for the answer (default 3)")


def _token(admin: AdminConfig, config_path: Path) -> str | None:
    """As the server chooses (`control.admin.resolve_token`, whose import costs a second of
    CPU on every probe): admin.token_file, relative to the config, else $SPLITPROXY_ADMIN_TOKEN.
    A file that cannot be read means no token: the answer (401) says the rest."""
    if admin.token_file:
        path = Path(admin.token_file)
        if not path.is_absolute():
            path = config_path.parent / path
        try:
            return path.read_text().strip() or None
        except OSError:
            return None
    return os.environ.get(TOKEN_ENV, "").strip() or None


def url_of(admin: AdminConfig, path: str) -> str:
    host, _, port = str(admin.listen).rpartition(":")
    return f"http://{_ANY_ADDRESS.get(host, host)}:{port}{path}"


def main(args: argparse.Namespace) -> int:
    try:
        admin = load_model(args.config, _AdminOnly).admin
    except ConfigError as exc:
        sys.stderr.write(f"unhealthy: cannot read the admin address: {exc.errors[0]}\n")
        return UNHEALTHY
    url = url_of(admin, "/readyz" if args.ready else "/healthz")
    request = urllib.request.Request(url)
    if (token := _token(admin, args.config)) is not None:
        request.add_header("Authorization", f"Bearer {token}")
    # No proxy handler: an http_proxy in the environment must not catch a loopback address.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=args.timeout) as response:
            sys.stdout.write(f"healthy: {url} answered {response.status}\n")
            return HEALTHY
    except urllib.error.HTTPError as exc:
        sys.stderr.write(f"unhealthy: {url} answered {exc.code} {exc.reason}\n")
    except (urllib.error.URLError, OSError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        sys.stderr.write(f"unhealthy: {url}: {reason}\n")
    return UNHEALTHY
