"""Fixtures of the HTTP/2 upstream tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from splitproxy.config.models import Health

from .pools import Version


@pytest.fixture
async def make_version() -> AsyncIterator[Callable[[list[int], Health], Version]]:
    made: list[Version] = []

    def make(ports: list[int], health: Health) -> Version:
        made.append(Version(ports, health))
        return made[-1]

    yield make
    for v in made:
        v.close()
