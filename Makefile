# sipyard — the two commands that matter: `make serve` and `make test`.
# Everything a fresh Debian 12 (Python 3.11) machine needs is installed from here.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
DEMO   ?= demo

.PHONY: serve test test-fast lint bench venv deps-test deps-bench clean

$(PY):
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { scripts/apt-install.sh python3-venv && $(PYTHON) -m venv $(VENV); }
	@$(PIP) install -q --upgrade pip >/dev/null 2>&1 || true

$(VENV)/.runtime: $(PY) pyproject.toml
	$(PIP) install -q -e '.[fast,redis,metrics]'
	@touch $@

$(VENV)/.test: $(VENV)/.runtime pyproject.toml
	$(PIP) install -q -e '.[test,fast,redis,metrics]'
	@touch $@

venv: $(VENV)/.runtime

## make serve: install, write a demo config on first run, run the server on 127.0.0.1:5060
serve: $(VENV)/.runtime
	$(VENV)/bin/sipyard demo-init $(DEMO)
	$(VENV)/bin/sipyard serve -c $(DEMO)/sipyard.toml

deps-test:
	@scripts/apt-install.sh sip-tester sipsak redis-server baresip-core sipvicious procps

## make test: install what the tests need (pip + Debian packages) and run the whole suite
test: $(VENV)/.test deps-test
	scripts/run-tests.sh

test-fast: $(VENV)/.test
	$(PY) -m pytest -q -m "not interop" tests

lint: $(VENV)/.test
	$(VENV)/bin/ruff check sipyard tests
	$(VENV)/bin/mypy

deps-bench:
	@scripts/apt-install.sh sip-tester kamailio time procps

## make bench: Kamailio and sipyard under the same sipp load, one run, ratio of CPU µs per call
bench: $(VENV)/.runtime deps-bench
	bench/run.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
