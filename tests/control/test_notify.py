"""Notification delivery (`control.notify`) against a real aiohttp receiver on 127.0.0.1:
retried with backoff after a 5xx (not after a 4xx), in order per receiver, never holding the
sender, bounded per receiver, and the Slack format's shape."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from splitproxy.config.steps import Webhook
from splitproxy.control import notify
from splitproxy.control.notify import Notifier, slack_message
from tests.support.fakes import run_receiver
from tests.support.waiting import WAIT, wait_until


@contextlib.asynccontextmanager
async def notifier(sleep: notify.Sleep | None = None) -> AsyncIterator[Notifier]:
    async with aiohttp.ClientSession() as session:
        n = Notifier(lambda: session, sleep or asyncio.sleep)
        try:
            yield n
        finally:
            await n.close(0.0)


def hook(url: str, **kw: Any) -> Webhook:
    return Webhook.model_validate({"on": "all", "url": url, "timeout": "2s", **kw})


def payload(event: str = "abort", **kw: Any) -> dict[str, Any]:
    return {"event": event, "id": f"shop/r1/7/{event}", "route": "shop", "run": "r1",
            "phase": "aborted", "step": 1, "steps": 4, "weights": {"stable": 100, "canary": 0},
            "reason": "guard: canary error rate 50%", "message": f"shop: {event}", **kw}


class Delays:
    """A `sleep` that records the backoff asked for and waits only a moment."""

    def __init__(self) -> None:
        self.asked: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.asked.append(seconds)
        await asyncio.sleep(0.01)


async def test_a_500_is_retried_with_backoff_until_the_receiver_takes_it() -> None:
    delays = Delays()
    async with run_receiver(script=[500, 503, 502]) as rec, notifier(delays) as n:
        n.send(hook(rec.url()), payload())
        await wait_until(lambda: n.outcomes[("abort", "delivered")] == 1,
                         what="the notification delivered")
        assert delays.asked == [0.5, 1.0, 2.0]  # 0.5 s doubling
        attempts = [h["X-Splitproxy-Attempt"] for h in rec.headers()]
        assert attempts == ["1", "2", "3", "4"]
        assert {h["X-Splitproxy-Delivery"] for h in rec.headers()} == {"shop/r1/7/abort"}
        assert {h["X-Splitproxy-Event"] for h in rec.headers()} == {"abort"}
        assert rec.bodies()[-1] == payload()  # the JSON format is the payload itself


async def test_real_backoff_and_retry_after_are_honoured() -> None:
    async with run_receiver(script=[500]) as rec, notifier() as n:
        n.send(hook(rec.url()), payload())
        await wait_until(lambda: len(rec.got) == 2, what="the retry")
    delays = Delays()
    async with run_receiver(script=[429], retry_after="3") as rec, notifier(delays) as n:
        n.send(hook(rec.url()), payload())
        await wait_until(lambda: n.outcomes[("abort", "delivered")] == 1, what="delivered")
        assert delays.asked == [3.0]


async def test_a_4xx_is_final_and_retries_are_bounded() -> None:
    delays = Delays()
    async with run_receiver(script=[400]) as rec, notifier(delays) as n:
        n.send(hook(rec.url()), payload())
        await wait_until(lambda: n.outcomes[("abort", "failed")] == 1, what="a final refusal")
        assert (len(rec.got), delays.asked) == (1, [])
    async with run_receiver(script=[500] * 10) as rec, notifier(delays) as n:
        n.send(hook(rec.url(), retries=2), payload())
        await wait_until(lambda: n.outcomes[("abort", "failed")] == 1, what="retries spent")
        assert len(rec.got) == 3


async def test_notifications_keep_their_order_per_receiver_and_a_stuck_one_holds_no_other(
) -> None:
    delays = Delays()
    async with run_receiver(script=[500, 500]) as rec, notifier(delays) as n, \
            run_receiver(hold_all=True) as stuck:
        n.send(hook(stuck.url(), timeout="60s"), payload("paused"))
        for event in ("paused", "resumed", "promoted"):
            n.send(hook(rec.url()), payload(event))  # returns at once
        await wait_until(lambda: n.outcomes[("promoted", "delivered")] == 1,
                         what="all three delivered")
        # `paused` failed twice; `resumed` waited for it, never overtook it.
        assert [b["event"] for b in rec.bodies()] == ["paused", "paused", "paused", "resumed",
                                                      "promoted"]
        # Meanwhile the stuck receiver still holds its first attempt, and only that.
        assert (len(stuck.got), n.pending) == (1, 1)


async def test_a_receiver_that_never_answers_fills_only_its_own_bounded_queue(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(notify, "MAX_QUEUE", 3)
    async with run_receiver(hold_all=True) as held, notifier() as n:
        n.send(hook(held.url()), payload("e0"))
        await wait_until(lambda: len(held.got) == 1, what="the first attempt in flight")
        for i in range(1, 6):
            n.send(hook(held.url()), payload(f"e{i}"))
        # One in flight, three queued, the two oldest queued dropped.
        assert (n.outcomes[("e1", "dropped")], n.outcomes[("e2", "dropped")]) == (1, 1)
        assert n.pending == 4
        assert held.release is not None
        held.release.set()
        await wait_until(lambda: n.outcomes[("e5", "delivered")] == 1, what="the rest")
        assert [b["event"] for b in held.bodies()] == ["e0", "e3", "e4", "e5"]


async def test_close_waits_a_moment_for_what_is_queued() -> None:
    async with run_receiver(script=[500]) as rec:
        async with aiohttp.ClientSession() as session:
            n = Notifier(lambda: session, Delays())
            n.send(hook(rec.url()), payload())
            await n.close(WAIT)
        assert [h["X-Splitproxy-Attempt"] for h in rec.headers()] == ["1", "2"]


async def test_slack_format_is_an_incoming_webhook_message() -> None:
    verdict = {"key": "canary:error_rate", "outcome": "fail",
               "summary": "canary error rate 50% [30%, 70%] > 1%: e=1326 >= 600 (n=90, 45 "
                          "errors)"}
    body = payload(verdict=verdict, reason="guard: <script>&", revision="v2.2")
    async with run_receiver() as rec, notifier() as n:
        n.send(hook(rec.url(), format="slack"), body)
        await wait_until(lambda: len(rec.got) == 1, what="the Slack message")
    [(_, headers, got)] = rec.got
    assert got == slack_message(body)
    assert got["text"] == ":rotating_light: shop: abort"  # what a notification shows
    assert set(got) == {"text", "blocks"}
    kinds = [b["type"] for b in got["blocks"]]
    assert kinds == ["section", "section", "section", "context"]
    assert got["blocks"][0]["text"] == {"type": "mrkdwn", "text": ":rotating_light: shop: abort"}
    fields = {f["text"].split("\n")[0]: f["text"].split("\n")[1]
              for f in got["blocks"][1]["fields"]}
    assert fields == {"*Route*": "shop", "*Phase*": "aborted", "*Step*": "2/4",
                      "*Weights*": "stable 100, canary 0", "*Run*": "r1",
                      "*Revision*": "v2.2", "*Reason*": "guard: &lt;script&gt;&amp;"}
    assert all(f["type"] == "mrkdwn" for f in got["blocks"][1]["fields"])
    # Slack's mrkdwn escapes &, < and > (and shows them as written).
    assert got["blocks"][2]["text"]["text"] == "```{}```".format(
        verdict["summary"].replace(">", "&gt;"))
    assert got["blocks"][3]["elements"][0]["text"] == "splitproxy · abort · shop/r1/7/abort"
    assert headers["Content-Type"] == "application/json"
