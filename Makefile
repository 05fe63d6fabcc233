# Two commands: `make run` and `make test`. Everything else is `kianax ...` in .venv.
SHELL := /bin/bash
VENV ?= .venv
PYTHON_BIN := $(firstword $(foreach v,3.13 3.12 3.11,$(shell command -v python$(v) 2>/dev/null)) $(shell command -v python3))
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck schema clean bench

$(STAMP): pyproject.toml
	@$(PYTHON_BIN) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Kianax needs Python 3.11+")'
	$(PYTHON_BIN) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	@touch $@

run: $(STAMP)
	$(VENV)/bin/kianax run

test: $(STAMP) lint typecheck
	$(VENV)/bin/kianax schema --check
	$(VENV)/bin/pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy .

schema: $(STAMP)
	$(VENV)/bin/kianax schema

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
