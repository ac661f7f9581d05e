"""``brandbot serve --engine vllm``: the vLLM OpenAI server with flags derived from settings.

vLLM serves the same converted base folder the trainer trains on (so the fingerprints match),
under ``--served-model-name`` (what adapters record as ``base_model_name_or_path``), with LoRA
enabled and runtime adapter loading allowed (``VLLM_ALLOW_RUNTIME_LORA_UPDATING``).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from serving.adapters import vllm_lora_rank

GPU_EXTRA_HINT = "install the gpu extra on the GPU machine: pip install 'brandbot[gpu]'"


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
        env = " ".join(f"{k}={v}" for k, v in sorted(self.env.items()))
        return f"{env} {' '.join(masked)}"


def build_vllm_command(
    *,
    model_path: str,
    served_model_name: str,
    host: str = "0.0.0.0",  # noqa: S104 - a server in a container listens on all interfaces
    port: int = 8000,
    api_key: str | None = None,
    lora_rank: int = 16,
    max_loras: int = 4,
    max_cpu_loras: int | None = None,
    adapters: Mapping[str, str] | None = None,
    extra_args: Sequence[str] = (),
) -> VllmCommand:
    """vLLM's command line. ``lora_rank`` is the trainer's rank: ``--max-lora-rank`` becomes the
    smallest value vLLM accepts that admits it; ``--max-cpu-loras`` is at least ``max_loras``."""
    if max_loras < 1:
        raise ValueError("max_loras must be at least 1")
    cpu_loras = max(max_cpu_loras or 2 * max_loras, max_loras)
    argv = [
        "vllm",
        "serve",
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
    if api_key:
        argv += ["--api-key", api_key]
    argv += list(extra_args)
    env = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "HF_HUB_OFFLINE": "1"}
    return VllmCommand(argv, env)


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def exec_vllm(command: VllmCommand) -> None:
    """Replace this process with vLLM (signals and exit status then belong to vLLM)."""
    executable = shutil.which(command.argv[0])
    if not vllm_installed() or executable is None:
        raise VllmMissing(f"vLLM is not installed; {GPU_EXTRA_HINT}")
    os.execvpe(executable, command.argv, {**os.environ, **command.env})  # noqa: S606
