"""The CLI's side of the admin API: `splitproxy status | promote | abort | retry | pause |
resume` talk to a running proxy over HTTP, and read its answers into the `/status` models."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from splitproxy.cli.exitcodes import ExitCode, for_http_status
from splitproxy.config.address import HostPort
from splitproxy.config.models import admin_listen
from splitproxy.control.status import ActionResult, Status
from splitproxy.rollout import Action

TOKEN_ENV = "SPLITPROXY_ADMIN_TOKEN"
DEFAULT_ADMIN = HostPort("127.0.0.1:9901")

M = TypeVar("M", bound=BaseModel)


class AdminError(Exception):
    """A failed admin call; `code` is the exit code it maps to."""

    def __init__(self, message: str, code: ExitCode) -> None:
        super().__init__(message)
        self.code = code


# The admin API is reached directly, never through http_proxy/https_proxy/all_proxy: a
# proxy in the environment (CI runners often set one) cannot reach 127.0.0.1 or a pod IP,
# and must not see the bearer token.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class AdminClient:
    def __init__(self, base_url: str, token: str | None = None, timeout: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token or os.environ.get(TOKEN_ENV) or None
        self.timeout = timeout

    def _request(self, method: str, path: str, model: type[M]) -> M:
        req = urllib.request.Request(self.base_url + path, method=method)
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        req.add_header("X-Splitproxy-Action", "1")  # not a cross-site form (adminguard)
        try:
            with _OPENER.open(req, timeout=self.timeout) as resp:
                body = resp.read()
        except urllib.error.HTTPError as exc:
            text = exc.read().decode("utf-8", "replace")
            try:
                message = json.loads(text).get("error", text)
            except (ValueError, AttributeError):
                message = text.strip()
            raise AdminError(f"{exc.code}: {message}", for_http_status(exc.code)) from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            raise AdminError(f"cannot reach the admin API at {self.base_url}: {reason}",
                             ExitCode.UNREACHABLE) from exc
        try:
            return model.model_validate_json(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(map(str, first["loc"])) or "the body"
            raise AdminError(f"unexpected answer from {self.base_url}{path}: {where}: "
                             f"{first['msg']}", ExitCode.ERROR) from exc

    def status(self) -> Status:
        return self._request("GET", "/status", Status)

    def act(self, route: str, action: Action, full: bool = False,
            reason: str | None = None) -> ActionResult:
        query = {}
        if full:
            query["full"] = "1"
        if reason:
            query["reason"] = reason
        suffix = "?" + urllib.parse.urlencode(query, quote_via=urllib.parse.quote) if query \
            else ""
        name = urllib.parse.quote(route, safe="")
        return self._request("POST", f"/routes/{name}/{action}{suffix}", ActionResult)


def admin_url(admin: str | None, config: Path | None) -> tuple[str, list[str]]:
    """The admin API's URL: `--admin`, else the config's `admin.listen`, else the default;
    and notes for stderr. A config that fails validation elsewhere still gives its
    `admin.listen`: `status` is needed most when an edit went wrong."""
    if admin is not None:
        return admin, []
    if config is None:
        return DEFAULT_ADMIN.local_url(), []
    listen, errors = admin_listen(config)
    notes = []
    if errors:
        notes.append(f"note: {config} does not load ({len(errors)} problem"
                     f"{'s' if len(errors) > 1 else ''}, see `splitproxy check -c {config}`); "
                     f"using its admin.listen {listen}")
    return listen.local_url(), notes

