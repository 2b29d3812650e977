"""Rollout webhooks: pre-step gates (every hook's 2xx lets the step go) and notifications.

Calls run as tasks of their own; a gate's answer comes back to the rollout owner as an event
through the callback, so a slow hook holds only its own step. Notifications are queued per
receiver and retried with backoff (`notify`), so a dead receiver holds nothing either.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp

from splitproxy.config.steps import Webhook
from splitproxy.control.notify import Notifier, post

log = logging.getLogger("splitproxy.control.webhooks")


class Webhooks:
    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.notifier = Notifier(self.session)

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def call(self, hook: Webhook, payload: dict[str, Any]) -> tuple[bool, str]:
        """POST the payload as JSON once; (2xx?, a short description of the outcome)."""
        attempt = await post(self.session(), hook, payload)
        return attempt.ok, attempt.detail

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def notify(self, hooks: Sequence[Webhook], payload: dict[str, Any]) -> None:
        """Tell every hook (in order per receiver, retried); nothing waits for it."""
        for hook in hooks:
            self.notifier.send(hook, payload)

    def ask(self, hooks: Sequence[Webhook], payload: dict[str, Any],
            answer: Callable[[bool, str], None]) -> None:
        """Ask every gate at once; `answer(all 2xx?, details)` when all have answered."""
        self._spawn(self._ask(hooks, payload, answer))

    async def _ask(self, hooks: Sequence[Webhook], payload: dict[str, Any],
                   answer: Callable[[bool, str], None]) -> None:
        results = await asyncio.gather(*(self.call(h, payload) for h in hooks))
        bad = [detail for ok, detail in results if not ok]
        answer(not bad, "; ".join(bad) or "ok")

    async def close(self) -> None:
        """Waits a moment for notifications in flight (an abort's must not be lost to a
        shutdown), then stops."""
        await self.notifier.close(1.0)
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=1.0)
        for task in list(self._tasks):
            task.cancel()
        if self._session is not None:
            await self._session.close()
            self._session = None
