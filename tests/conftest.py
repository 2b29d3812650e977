"""Fixtures for every test directory. Helpers live in `tests/support/`, imported from there."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from tests.support.ports import refusing_ports
from tests.support.processes import PrometheusServer, require_binary


@pytest.fixture
def refused_port() -> Iterator[Callable[[], int]]:
    """Makes ports where connecting is refused, held for the whole test (see
    `refusing_ports`)."""
    with refusing_ports() as make:
        yield make


@pytest.fixture
async def prometheus(tmp_path: Path) -> AsyncIterator[PrometheusServer]:
    """A real `prometheus` in the test's tmp dir (replicas, custom metrics). Not started
    yet: the test calls `await prometheus.start(targets)`; stopped after."""
    server = PrometheusServer(require_binary("prometheus"), tmp_path / "prometheus")
    try:
        yield server
    finally:
        await server.stop()
