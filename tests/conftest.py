"""Fixtures for every test directory. Helpers live in `tests/support/`, imported from there."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.support.ports import refusing_ports


@pytest.fixture
def refused_port() -> Iterator[Callable[[], int]]:
    """Makes ports where connecting is refused, held for the whole test (see
    `refusing_ports`)."""
    with refusing_ports() as make:
        yield make
