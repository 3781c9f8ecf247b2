# Two commands do all set-up: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= config/homeserver.yaml
WEB_DIR := web
WEB_SOURCES := $(shell find $(WEB_DIR)/src $(WEB_DIR)/public -type f) $(addprefix $(WEB_DIR)/,index.html build.mjs tsconfig.json)

.PHONY: run test lint unit migrate clean web

# The venv is rebuilt whenever the pinned dependencies change. psycopg2 has no Linux wheel:
# pip builds it, with a C compiler, Python's headers and libpq's (pg_config); a fresh Debian
# has none of them, nor the venv module: installed with apt-get when missing.
$(BIN)/.installed: setup.cfg pyproject.toml
	@v=$$($(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])'); missing=""; \
	command -v pg_config >/dev/null 2>&1 || missing="$$missing libpq-dev"; \
	command -v gcc >/dev/null 2>&1 || missing="$$missing gcc"; \
	$(PYTHON) -c 'import ensurepip' 2>/dev/null || missing="$$missing python$$v-venv"; \
	$(PYTHON) -c 'import os, sysconfig; assert os.path.exists(sysconfig.get_paths()["include"] + "/Python.h")' \
	  2>/dev/null || missing="$$missing python$$v-dev"; \
	[ -z "$$missing" ] || { \
	  echo "installing$$missing (to build psycopg2 in a venv)"; \
	  (apt-get update -qq && apt-get install -y -qq $$missing) >/dev/null; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

# Bytecode compiled once (a no-op when current): with PYTHONDONTWRITEBYTECODE set, every
# start would compile the server's modules again (a third of its start-up time).
run: $(BIN)/.installed $(WEB_DIR)/dist/.built
	$(BIN)/python -m compileall -q homeserver plugins
	$(BIN)/homeserver migrate -c $(CONFIG)
	$(BIN)/homeserver run -c $(CONFIG)

migrate: $(BIN)/.installed
	$(BIN)/homeserver migrate -c $(CONFIG)

lint: $(BIN)/.installed $(WEB_DIR)/node_modules/.installed
	$(BIN)/ruff check homeserver plugins tests bench
	$(BIN)/ruff format --check homeserver plugins tests bench
	$(BIN)/mypy homeserver plugins
	@if [ -f $(WEB_DIR)/node_modules/.installed ]; then \
	  echo "tsc --strict --noEmit (web)" && $(WEB_DIR)/node_modules/.bin/tsc --noEmit -p $(WEB_DIR); \
	else echo "web/node_modules missing (no npm): the web client is not type-checked"; fi

# matrix-js-sdk for tests/test_js_sdk.py, from the committed lock file. Without npm the
# test skips (and fails in CI); the stamp is not written, so the next run tries again.
JS_DIR := tests/js
$(JS_DIR)/node_modules/.installed: $(JS_DIR)/package.json $(JS_DIR)/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
	  cd $(JS_DIR) && npm ci --no-audit --no-fund --loglevel=error && touch node_modules/.installed; \
	else echo "npm not found: the matrix-js-sdk tests will not run"; fi

# matrix-js-sdk 26 with libolm (Element Web 1.11's library) for tests/test_legacy_client.py.
LEGACY_JS_DIR := tests/js-legacy
$(LEGACY_JS_DIR)/node_modules/.installed: $(LEGACY_JS_DIR)/package.json $(LEGACY_JS_DIR)/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
	  cd $(LEGACY_JS_DIR) && npm ci --no-audit --no-fund --loglevel=error && touch node_modules/.installed; \
	else echo "npm not found: the matrix-js-sdk 26 tests will not run"; fi

# playwright-core and esbuild (plus matrix-js-sdk for page bundles) for the browser tests
# (tests/browser.py), which install Debian's chromium themselves when it is missing.
BROWSER_DIR := tests/browser
$(BROWSER_DIR)/node_modules/.installed: $(BROWSER_DIR)/package.json $(BROWSER_DIR)/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
	  cd $(BROWSER_DIR) && npm ci --no-audit --no-fund --loglevel=error && touch node_modules/.installed; \
	else echo "npm not found: the browser tests will not run"; fi

# The web client (web/, docs/web-client.md): TypeScript with matrix-js-sdk, bundled by esbuild
# into web/dist from the committed lock file; rebuilt when a source is newer than the stamp.
# Without npm the server's / says how to build it.
$(WEB_DIR)/node_modules/.installed: $(WEB_DIR)/package.json $(WEB_DIR)/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
	  cd $(WEB_DIR) && npm ci --no-audit --no-fund --loglevel=error && touch node_modules/.installed; \
	else echo "npm not found: the web client will not be built"; fi

$(WEB_DIR)/dist/.built: $(WEB_DIR)/node_modules/.installed $(WEB_SOURCES)
	@if [ -f $(WEB_DIR)/node_modules/.installed ]; then \
	  cd $(WEB_DIR) && node build.mjs && touch dist/.built; \
	else echo "web/node_modules missing: the web client is not built"; fi

web: $(WEB_DIR)/dist/.built

unit: $(BIN)/.installed $(JS_DIR)/node_modules/.installed $(LEGACY_JS_DIR)/node_modules/.installed \
    $(BROWSER_DIR)/node_modules/.installed $(WEB_DIR)/node_modules/.installed
	$(BIN)/pytest -q

test: lint unit

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache

# Benchmarks (bench/, README "Benchmarks"): ours on SQLite and PostgreSQL vs Synapse, one table;
# W1 and W3 again on ours as two worker processes behind HAProxy (docs/scaling.md "Measured").
# Installs the bench extra, Synapse (bench/.synapse-venv), and redis-server and haproxy with apt-get
# when missing; BENCH_ARGS=--quick for a smoke run.
# Then ejabberd with its messages archived in PostgreSQL, W2 at 500 and 1,000 msg/s and W1's full
# throughput (bench/ejabberd_w2.py: issue 12's reference, in the same hour; apt-get installs
# ejabberd and its PostgreSQL driver when missing); BENCH_EJABBERD=no skips it.
# Then federation (bench/federation_latency.py): send → remote sync and a 1,000-member remote
# join, ours↔ours and ours↔Synapse; `make bench-federation` runs that part alone.
.PHONY: bench bench-federation
bench: $(BIN)/.installed
	@command -v redis-server >/dev/null 2>&1 && PATH="$$PATH:/usr/sbin" command -v haproxy >/dev/null 2>&1 || { \
	  echo "installing redis-server and haproxy (the two-process rows)"; \
	  (apt-get update -qq && apt-get install -y -qq redis-server haproxy) >/dev/null; }
	$(BIN)/pip install -q --disable-pip-version-check -r bench/requirements.txt
	$(BIN)/python -m bench $(BENCH_ARGS)
	@if [ "$(BENCH_EJABBERD)" != no ]; then \
	  PATH="$$PATH:/usr/sbin" command -v ejabberdctl >/dev/null 2>&1 && dpkg -s erlang-p1-pgsql >/dev/null 2>&1 || { \
	    echo "installing ejabberd and erlang-p1-pgsql (the ejabberd reference rows)"; \
	    (apt-get update -qq && apt-get install -y -qq ejabberd erlang-p1-pgsql) >/dev/null; }; \
	  PATH="$$PATH:/usr/sbin" $(BIN)/python -m bench.ejabberd_w2 --storage pgsql --rates 500,1000,0 --report; fi
	$(BIN)/python -m bench.federation_latency $(BENCH_FEDERATION_ARGS)

bench-federation: $(BIN)/.installed
	$(BIN)/python -m bench.federation_latency $(BENCH_FEDERATION_ARGS)
