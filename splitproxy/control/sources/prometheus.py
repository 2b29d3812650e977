"""Analysis counts from Prometheus: the raw counters of every replica, read in one instant
query per reading, so the guard judges the whole fleet on the same numbers the local source
would count (`tally.CounterDiff` takes the exact differences). A failed query adds nothing:
the check is inconclusive, never a failure, and the next answer carries what it missed.

`analysis.prometheus.labels` narrows every query to one fleet (exact matchers such as
`job="shop"`); the credentials (a bearer token or basic auth) are read from their files at
every query, so a rotated secret applies at once, and never appear in /status or the log."""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path

import aiohttp

from splitproxy.config.guard import PrometheusQuery
from splitproxy.config.metrics import label_matchers
from splitproxy.rollout.tally import ERRORS, REQUESTS, TIMED, Series, slow_metric

QUERY_TIMEOUT = 5.0

# One family per count, and the same for synthetic load (judged only with include_synthetic).
_KINDS = {
    "splitproxy_requests_total": REQUESTS,
    "splitproxy_upstream_timed_requests_total": TIMED,
    "splitproxy_upstream_slow_requests_total": "slow",
}
_SYNTHETIC = "splitproxy_synthetic_"
# Labels that name *what* a series counts; every other label (instance, job, pod, ...) tells
# one replica's series from another's.
_OWN_LABELS = ("__name__", "route", "version")


def families(include_synthetic: bool) -> list[str]:
    names = list(_KINDS)
    if include_synthetic:
        names += [_SYNTHETIC + n.removeprefix("splitproxy_") for n in _KINDS]
    return names


def query(route: str, include_synthetic: bool, labels: dict[str, str] | None = None) -> str:
    """Every raw counter of `route` (route names are letters, digits, `_.-`: no quoting), of
    the series that also carry `labels` (values quoted as PromQL strings)."""
    names = "|".join(families(include_synthetic))
    return f'{{__name__=~"{names}",route="{route}"{label_matchers(labels or {})}}}'


def parse(result: list[dict[str, object]]) -> dict[Series, float]:
    """An instant vector of raw counters -> cumulative series for `tally.CounterDiff`."""
    out: dict[Series, float] = {}
    for item in result:
        labels = item["metric"]
        value = item["value"]
        if not isinstance(labels, dict) or not isinstance(value, list):
            raise ValueError(f"unexpected result item {item!r}")
        name = str(labels.get("__name__", ""))
        version = str(labels.get("version", ""))
        synthetic = name.startswith(_SYNTHETIC)
        kind = _KINDS.get("splitproxy_" + name.removeprefix(_SYNTHETIC) if synthetic else name)
        number = float(value[1])
        if kind is None or not version or not math.isfinite(number):
            continue
        which = ",".join(f"{k}={labels[k]}" for k in sorted(labels) if k not in _OWN_LABELS)
        if synthetic:
            which = "synthetic|" + which
        if kind == REQUESTS:
            out[(version, REQUESTS, which)] = number
            if str(labels.get("code", "")).startswith("5"):
                out[(version, ERRORS, which)] = number
        elif kind == TIMED:
            out[(version, TIMED, which)] = number
        else:
            out[(version, slow_metric(float(str(labels.get("over", "nan")))), which)] = number
    return out


def authorization(where: PrometheusQuery) -> str | None:
    """The Authorization header for `where`'s credentials, read from their files now."""
    if where.bearer_token_file is not None:
        return "Bearer " + _secret(where.bearer_token_file, "bearer_token_file")
    if where.basic_auth is not None:
        password = _secret(where.basic_auth.password_file, "basic_auth.password_file")
        pair = f"{where.basic_auth.username}:{password}".encode()  # RFC 7617: UTF-8
        return "Basic " + base64.b64encode(pair).decode("ascii")
    return None


def _secret(path: str, setting: str) -> str:
    try:
        value = Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise RuntimeError(f"analysis.prometheus.{setting}: cannot read {path}: "
                           f"{reason}") from None
    if not value:
        raise RuntimeError(f"analysis.prometheus.{setting}: {path} is empty")
    return value


class PrometheusSource:
    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    async def instant(self, where: PrometheusQuery, promql: str,
                      at: float | None = None) -> list[dict[str, object]]:
        """One instant query's result vector from `where` (its url, with its credentials),
        evaluated at `at` (Unix time) if given: queries that must agree, such as a ratio's
        two counters, are read at one instant. Raises on any failure."""
        auth = authorization(where)  # read now: a rotated secret applies at once
        if self._session is None:
            self._session = aiohttp.ClientSession()
        params = {"query": promql} if at is None else {"query": promql, "time": f"{at:.3f}"}
        headers = {"Authorization": auth} if auth is not None else {}
        async with self._session.get(
            where.url.rstrip("/") + "/api/v1/query", params=params, headers=headers,
            timeout=aiohttp.ClientTimeout(total=QUERY_TIMEOUT),
            allow_redirects=False,  # credentials go to the URL configured, nowhere else
        ) as resp:
            text = await resp.text(errors="replace")
            try:
                body = json.loads(text)
            except ValueError:
                body = None
            if resp.status != 200 or not isinstance(body, dict) \
                    or body.get("status") != "success":
                detail = body.get("error") if isinstance(body, dict) else None
                hint = (" (check analysis.prometheus.bearer_token_file or basic_auth)"
                        if resp.status in (401, 403) else "")
                raise RuntimeError(f"HTTP {resp.status}: "
                                   f"{detail or text.strip()[:200] or resp.reason}{hint}")
        data = body["data"]
        if data.get("resultType") != "vector":
            raise ValueError(f"expected a vector, got {data.get('resultType')!r}")
        result = data["result"]
        if not isinstance(result, list):
            raise ValueError("expected a list of series")
        return result

    async def counters(self, where: PrometheusQuery, route: str, include_synthetic: bool
                       ) -> tuple[dict[Series, float] | None, dict[str, str], str | None]:
        """(the route's raw counters or None, the query, the error if it failed)."""
        promql = query(route, include_synthetic, where.labels)
        shown = {"counters": promql}
        try:
            series = parse(await self.instant(where, promql))
        except (aiohttp.ClientError, TimeoutError, RuntimeError, ValueError, KeyError,
                TypeError, IndexError) as exc:
            return None, shown, f"prometheus query failed: {type(exc).__name__}: {exc}"
        return series, shown, None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
