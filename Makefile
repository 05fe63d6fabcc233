# Two commands: `make run` and `make test`. Everything else is `kianax ...` in .venv.
SHELL := /bin/bash
VENV ?= .venv
# The first interpreter that really runs and is 3.11+ (pyenv shims exist for versions
# that are not active, so being on PATH is not enough).
PYTHON_BIN := $(shell for c in python3 python3.13 python3.12 python3.11; do \
	$$c -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && { echo $$c; break; }; done)
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck schema clean bench

$(STAMP): pyproject.toml
	@test -n "$(PYTHON_BIN)" || { echo "Kianax needs Python 3.11+ (python3)"; exit 1; }
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
