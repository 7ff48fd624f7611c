# Two commands on a fresh machine: `make demo`, then `make test`. Everything else installs itself.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV := $(shell command -v uv 2>/dev/null || echo "$(PYTHON) -m uv")
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export RAY_AUTH_MODE ?= disabled
export HF_HUB_OFFLINE ?= 1

.PHONY: setup demo test lint bench clean

$(BIN)/.synced: pyproject.toml uv.lock
	@command -v uv >/dev/null 2>&1 || $(PYTHON) -m uv --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv
	$(UV) sync --frozen --compile-bytecode
	@touch $@

setup: $(BIN)/.synced

demo: setup
	$(BIN)/faceshard demo --out faceshard-demo

test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q

bench: setup
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done
	$(BIN)/faceshard bench build --fixtures ../shared/fixtures --work bench-work --repeat 3 --json-out bench-work/build.json
	$(BIN)/faceshard bench startup --fixtures ../shared/fixtures --work bench-work --json-out bench-work/startup.json

clean:
	rm -rf faceshard-demo .pytest_cache .ruff_cache
