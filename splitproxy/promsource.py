"""Analysis numbers from Prometheus: PromQL over every replica's `splitproxy_*` series, so a
fleet judges its canary on all of its traffic (as Flagger does). A failed query makes the
check inconclusive, never a failure."""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field

import aiohttp

QUERY_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class PromSample:
    """The same questions a `window.Sample` answers, answered by Prometheus."""

    requests: int
    errors: int
    quantiles: dict[float, float | None] = field(default_factory=dict)  # seconds

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    def quantile(self, q: float) -> float | None:
        return self.quantiles.get(q)


def queries(route: str, version: str, seconds: float, quantiles: list[float],
            include_synthetic: bool) -> dict[str, str]:
    """The PromQL for one version over one window, by what it measures."""
    sel = f'route="{route}",version="{version}"'
    rng = f"[{max(1, round(seconds))}s]"
    requests = f"sum(increase(splitproxy_requests_total{{{sel}}}{rng}))"
    errors = f'sum(increase(splitproxy_requests_total{{{sel},code=~"5.."}}{rng}))'
    if include_synthetic:
        requests += f" + sum(increase(splitproxy_synthetic_requests_total{{{sel}}}{rng}))"
        errors += (f' + sum(increase(splitproxy_synthetic_requests_total'
                   f'{{{sel},code=~"5.."}}{rng}))')
    out = {"requests": requests, "errors": errors}
    for q in quantiles:
        out[f"q{q}"] = (f"histogram_quantile({q}, sum by (le) "
                        f"(rate(splitproxy_request_duration_seconds_bucket{{{sel}}}{rng})))")
    return out


class PrometheusSource:
    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    async def _query(self, url: str, promql: str) -> float | None:
        """One instant query; None for an empty result; raises on any failure."""
        if self._session is None:
            self._session = aiohttp.ClientSession()
        async with self._session.get(
            url.rstrip("/") + "/api/v1/query", params={"query": promql},
            timeout=aiohttp.ClientTimeout(total=QUERY_TIMEOUT),
        ) as resp:
            body = await resp.json(content_type=None)
            if resp.status != 200 or body.get("status") != "success":
                raise RuntimeError(f"HTTP {resp.status}: {body.get('error', body)}")
        result = body["data"]["result"]
        if not result:
            return None
        value = float(result[0]["value"][1])
        return None if math.isnan(value) or math.isinf(value) else value

    async def measure(
        self, url: str, route: str, version: str, seconds: float, quantiles: list[float],
        include_synthetic: bool,
    ) -> tuple[PromSample | None, dict[str, str], str | None]:
        """(numbers or None, the queries, the error if a query failed)."""
        qs = queries(route, version, seconds, quantiles, include_synthetic)
        try:
            answers = await asyncio.gather(*(self._query(url, q) for q in qs.values()))
            values = dict(zip(qs, answers, strict=True))
        except (aiohttp.ClientError, TimeoutError, RuntimeError, ValueError, KeyError) as exc:
            return None, qs, f"prometheus query failed: {type(exc).__name__}: {exc}"
        sample = PromSample(
            requests=round(values["requests"] or 0),
            errors=round(values["errors"] or 0),
            quantiles={q: values[f"q{q}"] for q in quantiles},
        )
        return sample, qs, None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
