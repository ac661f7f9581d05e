#!/usr/bin/env bash
# `make test`: set everything up on a fresh machine, then lint, type-check and run the whole
# suite. vLLM's environment (scripts/setup-vllm.sh, the slowest install) is made in the
# background while the main environment is set up and checked; the suite waits for it.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
MAKE="${MAKE:-make}"
log="$(mktemp)"
bash scripts/setup-vllm.sh .venv-vllm >"$log" 2>&1 &
vllm_setup=$!
bash scripts/setup.sh "$VENV"
bash scripts/ensure-postgres.sh
"$MAKE" --no-print-directory VENV="$VENV" lint typecheck
if ! wait "$vllm_setup"; then
  cat "$log"
  echo "test: setting up vLLM's environment failed (scripts/setup-vllm.sh, output above)" >&2
  exit 1
fi
cat "$log"
rm -f "$log"
"$MAKE" --no-print-directory VENV="$VENV" unit
