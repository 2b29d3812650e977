"""Who may use the admin API: the bearer token, the Host allow-list and the browser rules, as
one aiohttp middleware whose settings a reload replaces (no restart).

The checks, in order (the first that fails answers):

1. **Host** (DNS rebinding): the `Host` must be an IP literal, `localhost`, the host of
   `admin.listen` or one of `admin.allowed_hosts`; else 421 Misdirected Request. A rebinding
   page reaches the API under a name of its own, never under an IP literal: an IP in `Host`
   means the page's origin *is* that address.
2. **Browsers** (cross-site requests): `Sec-Fetch-Site: cross-site` or `same-site` (another
   port on the same host is the same *site*), or an `Origin` other than the API's own
   (`http://` or `https://` + the `Host`), gets 403.
3. **Actions** (anything but GET and HEAD) need `Content-Type: application/json` or an
   `X-Splitproxy-Action` header, which no HTML form can send and no cross-site script can
   send without a CORS preflight that the API never grants: else 403.
4. **Token**, when one is set (`admin.token_file` or `SPLITPROXY_ADMIN_TOKEN`): every path but
   the probes (`/healthz`, `/readyz`) and `/metrics` (unless `admin.metrics_auth`) needs
   `Authorization: Bearer <token>`, compared in constant time; else 401.

The token file is re-read when it changes (a Secret rotated by the kubelet's `..data` swap
included), checked at each request that needs it: a file that turns unreadable or empty keeps
the previous token (never an open API) and is reported in /status and the log.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware

from splitproxy.config.address import HostPort
from splitproxy.config.models import AdminConfig, ConfigError

log = logging.getLogger("splitproxy.control.adminguard")

TOKEN_ENV = "SPLITPROXY_ADMIN_TOKEN"
ACTION_HEADER = "X-Splitproxy-Action"
PROBES = frozenset({"/healthz", "/readyz"})
METRICS = "/metrics"
SAFE_METHODS = frozenset({"GET", "HEAD"})
REFUSED_SITES = frozenset({"cross-site", "same-site"})

StatKey = tuple[int, int, int, int, int]


def listen_host(listen: HostPort) -> str:
    return listen.host.lower()


def is_loopback(listen: HostPort) -> bool:
    host = listen_host(listen)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def host_name(header: str) -> str | None:
    """The name in a `Host` header (port, brackets and a final dot dropped, lower case);
    None if it is not a host."""
    try:
        name = urlsplit("//" + header).hostname
    except ValueError:
        return None
    return name.rstrip(".") if name else None


@dataclass(frozen=True, slots=True)
class Settings:
    """What one config says about admin access, with the token it names read."""

    token: str | None
    token_path: Path | None  # None: the token (if any) is from the environment
    stat: StatKey | None
    metrics_auth: bool
    allowed_hosts: frozenset[str]


def _stat(path: Path) -> StatKey:
    st = os.stat(path)  # follows symlinks: a `..data` swap is a new inode
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _read_token(path: Path) -> tuple[str, StatKey]:
    try:
        stat = _stat(path)
        token = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError([f"admin.token_file: cannot read {path}: {why}"]) from exc
    if not token:
        raise ConfigError([f"admin.token_file: {path} is empty"])
    return token, stat


def resolve(admin: AdminConfig, config_path: Path | None = None,
            listen: HostPort | None = None) -> Settings:
    """The settings of `admin`, token file read; ConfigError if it cannot be read or if a
    non-loopback listener would have no token (the admin API can abort and promote).
    `listen`: the address actually bound, when it is not `admin.listen` (after a reload)."""
    listen = listen or admin.listen
    token: str | None = os.environ.get(TOKEN_ENV, "").strip() or None
    path: Path | None = None
    stat: StatKey | None = None
    if admin.token_file:
        path = Path(admin.token_file)
        if not path.is_absolute() and config_path is not None:
            path = config_path.parent / path
        token, stat = _read_token(path)
    if token is None and not is_loopback(listen):
        raise ConfigError([
            f"admin.listen: {listen} is not a loopback address: set admin.token_file "
            f"or {TOKEN_ENV} so the admin API requires a bearer token"
        ])
    return Settings(token, path, stat, admin.metrics_auth,
                    frozenset(h.lower().rstrip(".") for h in admin.allowed_hosts))


class AdminGuard:
    """The admin API's access rules; `prepare` + `install` apply a reloaded config's."""

    def __init__(self, admin: AdminConfig, config_path: Path | None = None) -> None:
        self.config_path = config_path
        self.settings = resolve(admin, config_path)
        # The address actually bound: admin.listen needs a restart to change.
        self._listen = admin.listen
        self._listen_host = listen_host(admin.listen)
        self.public = set(PROBES)  # paths that never need the token
        self.token_error: str | None = None

    # -- reload ----------------------------------------------------------------------------
    def prepare(self, admin: AdminConfig) -> Settings:
        """A reloaded config's settings, token read; ConfigError rejects the reload whole.
        Judged against the address bound, not a new admin.listen that waits for a restart."""
        return resolve(admin, self.config_path, self._listen)

    def install(self, new: Settings) -> None:
        old, self.settings = self.settings, new
        self.token_error = None
        where = f"admin.token_file {new.token_path}" if new.token_path else TOKEN_ENV
        if old.token is None and new.token is not None:
            log.warning("admin API token set by reload (%s): /status and actions need it now",
                        where, extra={"event": "admin_token_added"})
        elif old.token is not None and new.token is None:
            log.warning("admin API token removed by reload: /status and actions are open to "
                        "whoever reaches %s", self._listen_host,
                        extra={"event": "admin_token_removed"})
        elif old.token != new.token:
            log.warning("admin API token changed by reload (%s): the old one is refused",
                        where, extra={"event": "admin_token_changed"})
        if old.metrics_auth != new.metrics_auth:
            log.info("admin.metrics_auth is now %s", new.metrics_auth)
        if old.allowed_hosts != new.allowed_hosts:
            log.info("admin.allowed_hosts is now %s", sorted(new.allowed_hosts))

    # -- the token -------------------------------------------------------------------------
    def token(self) -> str | None:
        """The token in force: the file's current content if it changed and is usable."""
        s = self.settings
        if s.token_path is None:
            return s.token
        try:
            stat = _stat(s.token_path)
        except OSError as exc:
            self._keep(f"cannot read {s.token_path}: {exc.strerror}")
            return s.token
        if stat == s.stat:
            return s.token
        try:
            token, stat = _read_token(s.token_path)
        except ConfigError as exc:
            self._keep(exc.errors[0].removeprefix("admin.token_file: "))
            return s.token
        if token != s.token:
            log.warning("admin API token changed: re-read from %s; the old one is refused",
                        s.token_path, extra={"event": "admin_token_changed"})
        self.settings = Settings(token, s.token_path, stat, s.metrics_auth, s.allowed_hosts)
        self.token_error = None
        return token

    def _keep(self, error: str) -> None:
        if error != self.token_error:
            log.error("admin.token_file: %s; the previous token stays in force", error,
                      extra={"event": "admin_token_unreadable"})
        self.token_error = error

    # -- the checks ------------------------------------------------------------------------
    def host_allowed(self, header: str) -> bool:
        name = host_name(header)
        if name is None:
            return False
        return (_is_ip(name) or name in ("localhost", self._listen_host)
                or name in self.settings.allowed_hosts)

    def needs_token(self, path: str) -> bool:
        if path in self.public:
            return False
        return path != METRICS or self.settings.metrics_auth

    def refusal(self, request: web.Request) -> web.Response | None:
        """The answer to a request these rules refuse; None to let it through."""
        headers = request.headers
        host = headers.get(hdrs.HOST)
        if host is not None and not self.host_allowed(host):
            return _refuse(request, 421, f"Host {host!r} is not one this admin API answers "
                           "to (IP literals, localhost, the admin.listen host, "
                           "admin.allowed_hosts)")
        site = headers.get("Sec-Fetch-Site", "").lower()
        if site in REFUSED_SITES:
            return _refuse(request, 403, f"a {site} browser request (Sec-Fetch-Site)")
        origin = headers.get(hdrs.ORIGIN)
        if origin is not None and not _same_origin(origin, host):
            return _refuse(request, 403, f"Origin {origin!r} is not this admin API's own")
        if request.method not in SAFE_METHODS and request.content_type != "application/json" \
                and not headers.get(ACTION_HEADER):
            return _refuse(request, 403, f"an action needs Content-Type: application/json or "
                           f"an {ACTION_HEADER} header")
        if self.needs_token(request.path):
            token = self.token()
            if token is not None and not _token_matches(headers, token):
                return web.Response(status=401, text="401 Unauthorized: bearer token required\n",
                                    headers={"WWW-Authenticate": "Bearer"})
        return None

    def middleware(self) -> Middleware:
        @web.middleware
        async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
            refused = self.refusal(request)
            if refused is not None:
                return refused
            return await handler(request)

        return guard

    def describe(self) -> dict[str, Any]:
        """For /status: what needs the token and where it comes from (never the token)."""
        s = self.settings
        names = {"localhost", *s.allowed_hosts}
        if not _is_ip(self._listen_host):
            names.add(self._listen_host)
        return {
            "token": "required" if s.token is not None else "none",
            "token_source": ("file" if s.token_path else "environment") if s.token else None,
            "token_file": str(s.token_path) if s.token_path else None,
            "token_error": self.token_error,
            "metrics_auth": s.metrics_auth,
            "allowed_hosts": sorted(names),  # and every IP literal
        }


def _same_origin(origin: str, host: str | None) -> bool:
    if host is None:
        return False
    origin = origin.lower()
    host = host.lower()
    return origin in (f"http://{host}", f"https://{host}")


def _token_matches(headers: Any, token: str) -> bool:
    # aiohttp decodes header bytes as UTF-8 with surrogateescape: encode them back the same
    # way, so a non-UTF-8 header is a wrong token (401), not an exception (500).
    given = headers.get(hdrs.AUTHORIZATION, "").encode("utf-8", "surrogateescape")
    return hmac.compare_digest(given, f"Bearer {token}".encode())


def _refuse(request: web.Request, status: int, why: str) -> web.Response:
    log.info("admin request refused (%d): %s %s: %s", status, request.method, request.path,
             why, extra={"status": status})
    reason = "Misdirected Request" if status == 421 else "Forbidden"
    return web.Response(status=status, text=f"{status} {reason}: {why}\n")
