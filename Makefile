# Two commands do all set-up: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= config/homeserver.yaml

.PHONY: run test lint unit migrate clean

# The venv is rebuilt whenever the pinned dependencies change.
$(BIN)/.installed: setup.cfg pyproject.toml
	@command -v pg_config >/dev/null 2>&1 || { \
	  echo "installing libpq-dev (needed to build psycopg2)"; \
	  (apt-get update -qq && apt-get install -y -qq libpq-dev) >/dev/null; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

run: $(BIN)/.installed
	$(BIN)/homeserver migrate -c $(CONFIG)
	$(BIN)/homeserver run -c $(CONFIG)

migrate: $(BIN)/.installed
	$(BIN)/homeserver migrate -c $(CONFIG)

lint: $(BIN)/.installed
	$(BIN)/ruff check homeserver plugins tests
	$(BIN)/ruff format --check homeserver plugins tests
	$(BIN)/mypy homeserver plugins

unit: $(BIN)/.installed
	$(BIN)/pytest -q

test: lint unit

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache
