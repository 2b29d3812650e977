"""A rollout's settings (`rollout:`): its identity, steps, deployment window and webhooks."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator, Field, Strict, model_validator

from splitproxy.config.crossfield import step_problems
from splitproxy.config.units import Frozen, Name, Timeout, WebhookUrl
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


class Pause(Frozen):
    duration: Timeout | None = None  # None: until `splitproxy promote`


class Step(Frozen):
    set_weight: Annotated[int, Strict(), Field(ge=0, le=100)] | None = None
    pause: Annotated[Pause, BeforeValidator(_pause)] | None = None

    @model_validator(mode="after")
    def _one_action(self) -> Step:
        if problems := step_problems(self.set_weight is not None, self.pause is not None):
            raise Located(problems)
        return self


class DeployWindow(Frozen):
    """When steps may advance (Spinnaker's restricted execution windows); abort is always
    allowed. Both ends are inclusive to the minute (`end: 23:59` includes 23:59); an `end`
    before `start` runs across midnight, belonging to the day it starts on."""

    days: tuple[Annotated[str, AfterValidator(_day)], ...] = _DAYS
    start: Annotated[str, AfterValidator(_hhmm)] = "00:00"
    end: Annotated[str, AfterValidator(_hhmm)] = "23:59"
    tz: Annotated[str, AfterValidator(_time_zone)] = "UTC"


class WebhookEvent(StrEnum):
    """What a rollout tells the outside world: the one list of event names, for webhooks now
    and for notifications later."""

    PRE_STEP = "pre-step"  # before a step that changes weights; non-2xx holds it
    POST_STEP = "post-step"  # after every step the rollout passed
    ABORT = "abort"
    PROMOTED = "promoted"


class Webhook(Frozen):
    on: WebhookEvent
    url: WebhookUrl
    timeout: Timeout = 5.0


class Rollout(Frozen):
    # Changing it starts a new rollout: a new build behind the same endpoints is announced
    # here (CI sets it to the image tag). Endpoints and thresholds are not part of a rollout.
    revision: str | None = None
    canary: Name | None = None  # the version the steps weigh; default: first non-baseline
    # None: the config's weights serve, and `revision` alone names the rollout.
    steps: tuple[Step, ...] = ()
    window: DeployWindow | None = None
    webhooks: tuple[Webhook, ...] = ()

