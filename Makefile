# `make demo` and `make test` work on a fresh machine with only Python 3.11 and make:
# each builds .venv on first use and reinstalls into it whenever pyproject.toml changes.
# `make demo` installs only what running needs; `make test` adds the test and load extras.

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
RUN_STAMP := $(VENV)/.installed-run

.PHONY: demo test test-compiled compiled lint typecheck bench loadtest clean constraints

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
	$(BIN)/ruff check splitproxy tests loadtests setup.py
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy splitproxy loadtests tests setup.py

test: lint typecheck
	$(BIN)/pytest -q -n 2 --dist loadfile
	$(MAKE) --no-print-directory test-compiled

# The compiled data plane (README, "The compiled data plane"): the hot modules built with
# mypyc in a copy of the package under build/compiled, never next to the sources, so an edit
# cannot run stale compiled code. Rebuilt whenever a source file changes.
COMPILED := build/compiled
COMPILED_SOURCES := $(shell find splitproxy -name '*.py' -not -path '*/__pycache__/*')
compiled: $(COMPILED)/.built

$(COMPILED)/.built: $(COMPILED_SOURCES) loadtests/compiled.py $(STAMP)
	$(BIN)/python -m loadtests.compiled --dest $(COMPILED)

# Runs against the build: splitproxy from build/compiled, tests and loadtests from here.
# PYTHONSAFEPATH keeps a child's cwd (`python -m splitproxy` in the repository) off sys.path,
# and --import-mode=append keeps pytest from putting the repository first.
COMPILED_ENV := PYTHONPATH=$(CURDIR)/$(COMPILED):$(CURDIR) PYTHONSAFEPATH=1 \
	SPLITPROXY_EXPECT_COMPILED=1
# The tests that drive the hot modules end to end (all of tests/integration, its hostile/ and
# h2/ included), the unit tests (no sockets: 10 s) and the cost gate on the build's own budget:
# about 75 s on the 2-core machine.
COMPILED_TESTS := tests/packaging/test_compiled.py tests/loadtests/test_costgate.py \
	tests/integration tests/dataplane tests/unit
# Without a C compiler (exit 3 of the check): a loud warning, unless CI
# (SPLITPROXY_REQUIRE_SERVICES=1) requires the compiled build. The build goes through
# $(SUBMAKE), not $(MAKE), so that `make -n test` prints this recipe and runs nothing.
SUBMAKE = $(MAKE)
test-compiled: $(STAMP)
	@$(BIN)/python -m loadtests.compiled --check; rc=$$?; \
	if [ $$rc -eq 3 ] && [ "$$SPLITPROXY_REQUIRE_SERVICES" != 1 ]; then \
	  printf '\n%s\n%s\n\n' '*** WARNING: the compiled data plane was NOT built or tested' \
	    '*** (install a C compiler and the Python headers, see above) ***' >&2; exit 0; \
	elif [ $$rc -ne 0 ]; then exit $$rc; fi; \
	set -ex; $(SUBMAKE) --no-print-directory compiled; \
	$(COMPILED_ENV) $(BIN)/pytest -q -n 2 --dist loadfile --import-mode=append --tb=native \
	  $(COMPILED_TESTS)

# A benchmark, not a test: needs wrk and nginx (apt-get install wrk nginx-light).
bench: $(STAMP) compiled
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
