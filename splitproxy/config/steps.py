"""A rollout's settings (`rollout:`): its identity, steps, deployment window and webhooks."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator, Field, Strict, model_validator

from splitproxy.config.crossfield import step_problems
from splitproxy.config.headerroute import HeaderRoute
from splitproxy.config.mirror import StepMirror
from splitproxy.config.units import Duration, Frozen, Name, Timeout, WebhookUrl, Weight
from splitproxy.config.yamlload import Located

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HHMM = re.compile(r"([01]\d|2[0-3]):[0-5]\d")
Millis = Annotated[float, Field(gt=0)]


def _pause(value: object) -> object:
    # `pause: 30s` is shorthand for `pause: {duration: 30s}`; `pause: {}` waits for a promote.
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        return {"duration": value}
    return value


def _time_zone(value: str) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {value!r}") from exc
    return value


def _hhmm(value: str) -> str:
    if not _HHMM.fullmatch(value):
        raise ValueError(f"expected a time like 09:30, got {value!r}")
    return value


def _day(value: str) -> str:
    if value.lower() not in _DAYS:
        raise ValueError(f"expected one of {', '.join(_DAYS)}, got {value!r}")
    return value.lower()


def _percent(value: float) -> float:
    if value > 100:
        raise ValueError("must be <= 100")
    return value


class Pause(Frozen):
    duration: Timeout | None = None  # None: until `splitproxy promote`


class Step(Frozen):
    # Percent of the traffic, down to 0.01 (Argo's sub-1% steps).
    set_weight: Annotated[Weight, AfterValidator(_percent)] | None = None
    pause: Annotated[Pause, BeforeValidator(_pause)] | None = None
    # From this step on (until abort or promotion), matching requests go to the canary.
    set_header_route: HeaderRoute | None = None
    # From this step on (until a later one, abort or promotion), copies go to the canary.
    set_mirror: StepMirror | None = None

    @model_validator(mode="after")
    def _one_action(self) -> Step:
        if problems := step_problems(self.set_weight is not None, self.pause is not None,
                                     self.set_header_route is not None,
                                     self.set_mirror is not None):
            raise Located(problems)
        return self

    def identity_dump(self) -> dict[str, object]:
        """What a rollout's identity hashes of this step: the fields of before header routes
        and mirror steps exactly as they dumped then (so no rollout restarts on upgrade), a
        header route or a mirror only where there is one."""
        data = self.model_dump()
        for added in ("set_header_route", "set_mirror"):
            if data[added] is None:
                del data[added]
        return data


class DeployWindow(Frozen):
    """When steps may advance (Spinnaker's restricted execution windows); abort is always
    allowed. Both ends are inclusive to the minute (`end: 23:59` includes 23:59); an `end`
    before `start` runs across midnight, belonging to the day it starts on."""

    days: tuple[Annotated[str, AfterValidator(_day)], ...] = _DAYS
    start: Annotated[str, AfterValidator(_hhmm)] = "00:00"
    end: Annotated[str, AfterValidator(_hhmm)] = "23:59"
    tz: Annotated[str, AfterValidator(_time_zone)] = "UTC"


class WebhookEvent(StrEnum):
    """What a rollout tells the outside world: the one list of event names, for webhooks and
    notifications."""

    PRE_STEP = "pre-step"  # before a step that changes weights; non-2xx holds it
    POST_STEP = "post-step"  # after every step the rollout passed
    ABORT = "abort"
    PROMOTED = "promoted"
    STEP_STARTED = "step-started"  # the rollout is at a new step (with the weights it set)
    PAUSED = "paused"  # and why: manual, waiting for promote or evidence, outside the window
    RESUMED = "resumed"
    SWITCHED = "switched"  # blue/green: another color took the traffic (a switch, or back)


# Every event but the gate: what `on: all` subscribes to.
NOTIFICATIONS = tuple(e for e in WebhookEvent if e != WebhookEvent.PRE_STEP)


class WebhookFormat(StrEnum):
    JSON = "json"  # the payload as documented (README: Notifications)
    SLACK = "slack"  # {"text", "blocks"}: Slack incoming webhooks, Mattermost, Rocket.Chat


def _events(value: object) -> object:
    # `on: abort`, `on: [paused, resumed]` or `on: all` (every notification).
    if value == "all":
        return NOTIFICATIONS
    if isinstance(value, str):
        return (value,)
    return value


def _distinct(events: tuple[WebhookEvent, ...]) -> tuple[WebhookEvent, ...]:
    if not events:
        raise ValueError("name at least one event (or `all`)")
    return tuple(dict.fromkeys(events))


class Webhook(Frozen):
    on: Annotated[tuple[WebhookEvent, ...], BeforeValidator(_events),
                  AfterValidator(_distinct)]

    @model_validator(mode="before")
    @classmethod
    def _yaml_on(cls, data: object) -> object:
        # YAML 1.1 (PyYAML) reads an unquoted `on:` key as the boolean true.
        if isinstance(data, dict) and True in data and "on" not in data:
            data = {("on" if k is True else k): v for k, v in data.items()}
        return data
    url: WebhookUrl
    timeout: Timeout = 5.0  # per attempt
    format: WebhookFormat = WebhookFormat.JSON
    # Notifications: attempts after the first one that failed (a connection error, a timeout,
    # 408, 429 or 5xx), 0.5 s doubling up to 30 s apart (or as Retry-After says). A pre-step
    # gate is not retried this way: it is asked again 2 s after any refusal.
    retries: Annotated[int, Strict(), Field(ge=0, le=20)] = 5

    @model_validator(mode="after")
    def _gate_gets_json(self) -> Webhook:
        if WebhookEvent.PRE_STEP in self.on and self.format != WebhookFormat.JSON:
            raise ValueError("a pre-step gate gets the JSON payload (a chat webhook answers "
                             "200 to anything and would approve every step): use a hook "
                             "of its own for `format: slack`")
        return self


class PreSwitch(Frozen):
    """Blue-green: what a change of `active` must pass before the traffic moves (Argo's
    prePromotionAnalysis). The new color is checked for an endpoint not ejected at every
    tick; for `duration` it takes only preview traffic; with `analysis: true` the route's
    guard judges that preview traffic and must pass. Until then the old color serves."""

    duration: Annotated[Duration, Field(ge=0)] = 0.0
    analysis: bool = False  # the route's `analysis` judges the preview traffic first


class Rollout(Frozen):
    # Changing it starts a new rollout: a new build behind the same endpoints is announced
    # here (CI sets it to the image tag). Endpoints and thresholds are not part of a rollout.
    revision: str | None = None
    canary: Name | None = None  # the version the steps weigh; default: first non-baseline
    # None: the config's weights serve, and `revision` alone names the rollout.
    steps: tuple[Step, ...] = ()
    window: DeployWindow | None = None
    webhooks: tuple[Webhook, ...] = ()

