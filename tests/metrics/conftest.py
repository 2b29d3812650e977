"""The custom-metrics tests use the `prometheus` fixture (tests/conftest.py); their helpers
are in tests/support/exporter.py."""
