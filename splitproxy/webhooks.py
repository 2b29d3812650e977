"""Rollout webhooks: a pre-step gate (non-2xx holds the step) and notifications."""

from __future__ import annotations

import logging
from typing import Any

import aiohttp

from splitproxy.config import Webhook

log = logging.getLogger("splitproxy.webhooks")


class Webhooks:
    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    async def call(self, hook: Webhook, payload: dict[str, Any]) -> tuple[bool, str]:
        """POST the payload as JSON; (2xx?, a short description of the outcome)."""
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            async with self._session.post(
                hook.url, json=payload, timeout=aiohttp.ClientTimeout(total=hook.timeout)
            ) as resp:
                ok = 200 <= resp.status < 300
                return ok, f"{hook.url} answered {resp.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            return False, f"{hook.url} failed: {type(exc).__name__} {exc}".strip()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
