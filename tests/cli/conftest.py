"""Fixtures for the CLI tests (the helpers are the rollout and integration suites')."""

from integration.conftest import refused_port

__all__ = ["refused_port"]
