"""The CLI tests: their fixtures are the whole suite's (tests/conftest.py: refused_port)."""
