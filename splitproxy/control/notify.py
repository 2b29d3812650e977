"""Delivering notifications: in order per receiver, retried with backoff, never in the way.

The rollout owner hands each notification over (`Notifier.send`) and goes on at once: every
receiver URL has a queue and one courier task that delivers its notifications one at a time,
in the order they were decided (a `resumed` never overtakes the `paused` before it). An
attempt that fails for a reason that may pass (no connection, a timeout, 408, 425, 429, 5xx)
is retried after 0.5 s, 1 s, 2 s, ... up to 30 s (or what Retry-After asks, up to 60 s), at
most `retries` times; any other answer (a 4xx: the receiver refuses this payload) is final.
A receiver that stays down only fills its own queue: at `MAX_QUEUE` the oldest notification
is dropped and counted. Every outcome is one log line and a count
(`splitproxy_notifications_total{event,result}`).

Each payload carries an `id` (route/run/decision/event), sent as `X-Splitproxy-Delivery`
with the attempt number as `X-Splitproxy-Attempt`: a retried delivery whose first attempt did
arrive (its answer was lost) can be recognised by the receiver.

`format: slack` renders the payload as a Slack message (`slack_message`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from splitproxy import __version__
from splitproxy.config.steps import Webhook, WebhookFormat

log = logging.getLogger("splitproxy.control.notify")

BACKOFF = 0.5  # seconds before the first retry; doubling
BACKOFF_MAX = 30.0
RETRY_AFTER_MAX = 60.0
MAX_QUEUE = 1000  # notifications waiting per receiver
RETRYABLE = frozenset({408, 425, 429})

Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Attempt:
    """One POST's outcome: the status (None: no answer) and what to log."""

    status: int | None
    detail: str
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def retryable(self) -> bool:
        return self.status is None or self.status in RETRYABLE or self.status >= 500


def _retry_after(value: str | None) -> float | None:
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP date: the backoff's own delay will do
    return None if seconds is None or seconds < 0 else min(seconds, RETRY_AFTER_MAX)


async def post(session: aiohttp.ClientSession, hook: Webhook, body: dict[str, Any],
               headers: dict[str, str] | None = None) -> Attempt:
    try:
        async with session.post(hook.url, json=body, headers=headers,
                                timeout=aiohttp.ClientTimeout(total=hook.timeout)) as resp:
            await resp.read()
            return Attempt(resp.status, f"{hook.url} answered {resp.status}",
                           _retry_after(resp.headers.get("Retry-After")))
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Attempt(None, f"{hook.url} failed: {type(exc).__name__} {exc}".strip())


@dataclass
class _Queue:
    items: deque[tuple[Webhook, dict[str, Any]]] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    busy: bool = False


class Notifier:
    def __init__(self, session: Callable[[], aiohttp.ClientSession],
                 sleep: Sleep = asyncio.sleep) -> None:
        self._session = session
        self._sleep = sleep
        self._queues: dict[str, _Queue] = {}
        self.outcomes: Counter[tuple[str, str]] = Counter()  # (event, result) -> count

    def send(self, hook: Webhook, payload: dict[str, Any]) -> None:
        """Queue one notification for `hook`'s receiver; returns at once."""
        q = self._queues.get(hook.url)
        if q is None:
            q = self._queues[hook.url] = _Queue()
        if len(q.items) >= MAX_QUEUE:
            _, dropped = q.items.popleft()
            self._count(dropped, "dropped")
            log.warning("notification %s to %s dropped: %d waiting for a receiver that does "
                        "not answer", dropped.get("event"), hook.url, MAX_QUEUE)
        q.items.append((hook, payload))
        q.wake.set()
        if q.task is None or q.task.done():
            q.task = asyncio.get_running_loop().create_task(self._courier(q))

    @property
    def pending(self) -> int:
        return sum(len(q.items) + q.busy for q in self._queues.values())

    async def _courier(self, q: _Queue) -> None:
        while True:
            if not q.items:
                q.wake.clear()
                await q.wake.wait()
                continue
            hook, payload = q.items.popleft()
            q.busy = True
            try:
                await self._deliver(hook, payload)
            finally:
                q.busy = False

    async def _deliver(self, hook: Webhook, payload: dict[str, Any]) -> None:
        body = slack_message(payload) if hook.format == WebhookFormat.SLACK else payload
        event = str(payload.get("event"))
        attempt = Attempt(None, "not sent")
        for n in range(hook.retries + 1):
            headers = {"User-Agent": f"splitproxy/{__version__}", "X-Splitproxy-Event": event,
                       "X-Splitproxy-Delivery": str(payload.get("id", "")),
                       "X-Splitproxy-Attempt": str(n + 1)}
            attempt = await post(self._session(), hook, body, headers)
            if attempt.ok:
                self._count(payload, "delivered")
                log.info("notification %s: %s (attempt %d)", event, attempt.detail, n + 1)
                return
            if not attempt.retryable or n == hook.retries:
                break
            delay = attempt.retry_after if attempt.retry_after is not None \
                else min(BACKOFF_MAX, BACKOFF * 2 ** n)
            log.info("notification %s: %s; retrying in %gs", event, attempt.detail, delay)
            await self._sleep(delay)
        self._count(payload, "failed")
        log.warning("notification %s not delivered: %s (%d attempts)", event, attempt.detail,
                    n + 1)

    def _count(self, payload: dict[str, Any], result: str) -> None:
        self.outcomes[(str(payload.get("event")), result)] += 1

    async def close(self, wait: float) -> None:
        """Lets queued notifications go out for up to `wait` seconds (an abort's must not be
        lost to a shutdown), then stops."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while self.pending and loop.time() < deadline:
            await asyncio.sleep(0.02)
        for q in self._queues.values():
            if q.task is not None:
                q.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await q.task
        self._queues.clear()


# -- Slack ------------------------------------------------------------------------------------
_ICONS = {"abort": ":rotating_light:", "promoted": ":white_check_mark:",
          "paused": ":double_vertical_bar:", "resumed": ":arrow_forward:",
          "step-started": ":arrow_right:", "post-step": ":heavy_check_mark:",
          "switched": ":twisted_rightwards_arrows:"}
_FIELD_MAX = 1900  # Slack: 2000 characters per field, 3000 per section text


def _escape(text: str, limit: int = _FIELD_MAX) -> str:
    """Slack's mrkdwn: &, < and > are control characters."""
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_message(payload: dict[str, Any]) -> dict[str, Any]:
    """A Slack incoming-webhook message (`text` for notifications and for receivers that
    read only that, such as Mattermost; `blocks` for the layout)."""
    event = str(payload.get("event", ""))
    message = str(payload.get("message") or f"{payload.get('route')}: {event}")
    text = f"{_ICONS.get(event, ':information_source:')} {message}"
    weights = payload.get("weights") or {}
    fields = [("Route", payload.get("route")), ("Phase", payload.get("phase")),
              ("Step", f"{int(payload.get('step') or 0) + 1}/{payload.get('steps')}"
               if payload.get("steps") else None),
              ("Weights", ", ".join(f"{v} {w}" for v, w in weights.items()) or None),
              ("Run", payload.get("run")), ("Revision", payload.get("revision")),
              ("Reason", payload.get("reason"))]
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": _escape(text, 2900)}},
        {"type": "section", "fields": [
            {"type": "mrkdwn", "text": f"*{name}*\n{_escape(str(value))}"}
            for name, value in fields if value is not None]},
    ]
    verdict = payload.get("verdict")
    if isinstance(verdict, dict) and verdict.get("summary"):
        blocks.append({"type": "section", "text": {
            "type": "mrkdwn", "text": f"```{_escape(str(verdict['summary']), 2800)}```"}})
    blocks.append({"type": "context", "elements": [{
        "type": "mrkdwn", "text": _escape(f"splitproxy · {event} · {payload.get('id', '')}")}]})
    return {"text": _escape(text, 2900), "blocks": blocks}
