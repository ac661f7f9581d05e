#!/usr/bin/env bash
# `make test`: set everything up on a fresh machine, then lint, type-check and run the whole
# suite. vLLM's environment (scripts/setup-vllm.sh, the slowest install) is made in the
# background while the main environment is set up; lint and the type check run beside the
# suite (they need the main environment, not vLLM's). Any of them failing fails the command.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
MAKE="${MAKE:-make}"
vllm_log="$(mktemp)"
checks_log="$(mktemp)"
trap 'rm -f "$vllm_log" "$checks_log"' EXIT
bash scripts/setup-vllm.sh .venv-vllm >"$vllm_log" 2>&1 &
vllm_setup=$!
bash scripts/setup.sh "$VENV"
bash scripts/ensure-postgres.sh
"$MAKE" --no-print-directory VENV="$VENV" lint typecheck >"$checks_log" 2>&1 &
checks=$!
if ! wait "$vllm_setup"; then
  kill "$checks" 2>/dev/null || true
  cat "$vllm_log"
  echo "test: setting up vLLM's environment failed (scripts/setup-vllm.sh, output above)" >&2
  exit 1
fi
cat "$vllm_log"
status=0
"$MAKE" --no-print-directory VENV="$VENV" unit || status=$?
checked=0
wait "$checks" || checked=$?
cat "$checks_log"
if [ "$checked" != 0 ]; then
  echo "test: lint or the type check failed (output above)" >&2
  exit 1
fi
exit "$status"
