"""Deployment windows: when a rollout's steps may advance (aborts are always allowed)."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from splitproxy.config.steps import DeployWindow

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def in_window(window: DeployWindow | None, now: float) -> bool:
    """Inside `window` at wall-clock `now`. Both ends are inclusive to the minute, so
    `end: 23:59` includes the day's last minute. A window whose end is before its start runs
    across midnight and belongs to the day it starts on: `fri 22:00-02:00` is open from Friday
    22:00 to Saturday 02:00 (02:00 included)."""
    if window is None:
        return True
    local = datetime.fromtimestamp(now, ZoneInfo(window.tz))
    hhmm = local.strftime("%H:%M")
    today = DAYS[local.weekday()]
    if window.start <= window.end:
        return today in window.days and window.start <= hhmm <= window.end
    if hhmm >= window.start:
        return today in window.days
    if hhmm <= window.end:
        return DAYS[(local.weekday() - 1) % 7] in window.days
    return False
