# `make demo` and `make test` work on a fresh machine with only Python 3.11 and make:
# each builds .venv on first use and reinstalls into it whenever pyproject.toml changes.
# `make demo` installs only what running needs; `make test` adds the test and load extras.

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
RUN_STAMP := $(VENV)/.installed-run

.PHONY: demo test lint typecheck bench loadtest clean constraints

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# constraints.txt pins every dependency (see its header); `make constraints` re-resolves it.
$(STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test,load]'
	touch $@

$(RUN_STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e .
	touch $@

demo: $(RUN_STAMP)
	$(BIN)/splitproxy demo

lint: $(STAMP)
	$(BIN)/ruff check splitproxy tests loadtests
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy splitproxy loadtests tests

test: lint typecheck
	$(BIN)/pytest -q -n 2 --dist loadfile

# A benchmark, not a test: needs wrk and nginx (apt-get install wrk nginx-light).
bench: $(STAMP)
	$(BIN)/python loadtests/bench.py $(BENCH_ARGS)

# Load-test scenarios end to end (all nine: about 6 minutes); JSON + PNG in loadtests/reports/.
# One scenario: make loadtest LOADTEST=bad-canary; the CI lengths: make loadtest LOADTEST_ARGS=--short
LOADTEST ?= all
loadtest: $(STAMP)
	$(BIN)/python -m loadtests.scenarios $(LOADTEST) $(LOADTEST_ARGS)

# Re-resolve every dependency in a scratch venv, without the old pins, and rewrite
# constraints.txt (its header kept); then `make test` installs and tests the new set.
RESOLVE := .venv-resolve
constraints:
	rm -rf $(RESOLVE) && $(PYTHON) -m venv $(RESOLVE)
	$(RESOLVE)/bin/python -m pip install --quiet --upgrade pip
	$(RESOLVE)/bin/python -m pip install --quiet '.[test,load]'
	{ sed -n '1,/^$$/p' constraints.txt; \
	  $(RESOLVE)/bin/python -m pip freeze | grep -iv '^splitproxy\b'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -rf $(RESOLVE) build

clean:
	rm -rf $(VENV) $(RESOLVE) build *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
