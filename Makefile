# `make demo` and `make test` work on a fresh machine with only Python 3.11 and make:
# each builds .venv on first use and reinstalls into it whenever pyproject.toml changes.

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck bench loadtest clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,load]'
	touch $@

demo: $(STAMP)
	$(BIN)/splitproxy demo

lint: $(STAMP)
	$(BIN)/ruff check splitproxy tests loadtests
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy splitproxy loadtests tests

test: lint typecheck
	$(BIN)/pytest -q

# A benchmark, not a test: needs wrk and nginx (apt-get install wrk nginx-light).
bench: $(STAMP)
	$(BIN)/python loadtests/bench.py $(BENCH_ARGS)

# Load-test scenarios end to end (all six: about 3.5 minutes); JSON + PNG in loadtests/reports/.
# One scenario: make loadtest LOADTEST=bad-canary; the CI lengths: make loadtest LOADTEST_ARGS=--short
LOADTEST ?= all
loadtest: $(STAMP)
	$(BIN)/python -m loadtests.scenarios $(LOADTEST) $(LOADTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
