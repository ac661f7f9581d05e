# The two commands of the README. Each does all of its own set-up.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: run test setup lint typecheck unit bench clean

run: setup
	$(VENV)/bin/brandbot run

test: setup
	bash scripts/ensure-postgres.sh
	$(MAKE) lint typecheck unit

setup:
	bash scripts/setup.sh $(VENV)

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck:
	$(VENV)/bin/mypy

unit:
	$(VENV)/bin/pytest

bench: setup
	$(PY) bench/import_bench.py

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache
