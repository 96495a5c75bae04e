# sipyard — the two commands that matter: `make serve` and `make test`.
# Everything a fresh Debian 12 (Python 3.11) machine needs is installed from here.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
DEMO   ?= demo

.PHONY: serve test test-fast lint bench fuzz soak venv core deps-test deps-bench clean

$(PY):
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { scripts/apt-install.sh python3-venv && $(PYTHON) -m venv $(VENV); }
	@$(PIP) install -q --upgrade pip >/dev/null 2>&1 || true

$(VENV)/.runtime: $(PY) pyproject.toml
	$(PIP) install -q -e '.[fast,redis,metrics,compile]'
	@touch $@

$(VENV)/.test: $(VENV)/.runtime pyproject.toml
	$(PIP) install -q -e '.[test,fast,redis,metrics,compile]'
	@touch $@

CORE_SRC := $(wildcard sipyard/*.py sipyard/sip/*.py sipyard/store/*.py sipyard/handlers/*.py \
  sipyard/proxy/*.py sipyard/redirect/*.py sipyard/redirect/redirectors/*.py)

# The SIP core compiled with mypyc (about 1.8x faster); pure Python when that fails.
$(VENV)/.core: $(VENV)/.runtime $(CORE_SRC) scripts/build_core.py
	@$(PY) scripts/build_core.py >/dev/null 2>$(VENV)/core-build.log \
	  && echo "SIP core compiled with mypyc" \
	  || echo "warning: mypyc build failed (see $(VENV)/core-build.log); running the pure-Python core"
	@touch $@

core: $(VENV)/.core

venv: $(VENV)/.runtime

## make serve: install, write a demo config on first run, run the server on 127.0.0.1:5060
serve: $(VENV)/.runtime $(VENV)/.core
	$(VENV)/bin/sipyard demo-init $(DEMO)
	$(VENV)/bin/sipyard serve -c $(DEMO)/sipyard.toml

deps-test:
	@scripts/apt-install.sh sip-tester sipsak redis-server baresip-core sipvicious procps systemd logrotate python3-venv python3-dev gcc chromium iptables

## make test: install what the tests need (pip + Debian packages) and run the whole suite
test: $(VENV)/.test $(VENV)/.core deps-test
	scripts/run-tests.sh

test-fast: $(VENV)/.test
	$(PY) -m pytest -q -m "not interop" tests

lint: $(VENV)/.test
	$(VENV)/bin/ruff check sipyard tests
	$(VENV)/bin/mypy

deps-bench:
	@scripts/apt-install.sh sip-tester kamailio time procps

## make bench: Kamailio and sipyard under the same sipp load, one run, ratio of CPU µs per call
bench: $(VENV)/.runtime $(VENV)/.core deps-bench
	bench/run.sh

## make fuzz: the parser/framing fuzz test (tests/test_fuzz.py) with a long budget, random seed
FUZZ_EXAMPLES ?= 100000
fuzz: $(VENV)/.test
	SIPYARD_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest -q -p no:cacheprovider \
	  -o timeout=0 --hypothesis-show-statistics tests/test_fuzz.py

## make soak: mixed sipp load (SOAK_SECONDS=600 at SOAK_RATE=600 calls/s), RSS and fds every 10 s
SOAK_SECONDS ?= 600
SOAK_RATE ?= 600
SOAK_INTERVAL ?= 10
soak: $(VENV)/.runtime $(VENV)/.core deps-bench
	SOAK_SECONDS=$(SOAK_SECONDS) SOAK_RATE=$(SOAK_RATE) SOAK_INTERVAL=$(SOAK_INTERVAL) \
	  $(PY) bench/soak.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist sipyard.egg-info
	rm -f sipyard/*.so sipyard/sip/*.so sipyard/store/*.so sipyard/handlers/*.so
