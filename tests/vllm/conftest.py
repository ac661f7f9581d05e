"""A real vLLM server for the session: the CPU build from ``.venv-vllm`` (made by
``scripts/setup-vllm.sh``, which ``make test`` runs), serving the bundled SmolLM2 with runtime
LoRA loading and an API key, started by the product's own launch command. Missing vLLM skips
these tests on a developer's machine and fails them under ``CI=true``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from bot.testkit.plugin import require_in_ci
from serving.base_model import ResolvedModel
from serving.client import HttpClient
from serving.vllm_launch import VllmCommand, build_vllm_command
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
SERVED = "brandbot-base"
KEY = "vllm-test-key"
START_TIMEOUT = 420.0


def vllm_python() -> str:
    configured = os.environ.get("BRANDBOT_VLLM_PYTHON")
    python = Path(configured) if configured else ROOT / ".venv-vllm" / "bin" / "python"
    if not python.is_file():
        require_in_ci(f"vLLM is not set up ({python} is missing): run scripts/setup-vllm.sh")
    return str(python)


@dataclass
class VllmServer:
    """One vLLM process; ``restart()`` kills it and starts it again (all adapters gone)."""

    command: VllmCommand
    url: str
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: list[float] = field(default_factory=list)

    def client(self, *, retries: int = 3, timeout: float = 120.0) -> HttpClient:
        return HttpClient(
            self.url, api_key=KEY, served_model_name=SERVED, retries=retries, timeout=timeout
        )

    def start(self) -> None:
        began = time.monotonic()
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.command.argv,
                env={**os.environ, **self.command.env},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        while time.monotonic() - began < START_TIMEOUT:
            if self.proc.poll() is not None:
                raise AssertionError(f"vLLM exited ({self.proc.returncode}):\n{self.tail()}")
            if self.healthy():
                self.starts.append(time.monotonic() - began)
                return
            time.sleep(1)
        self.stop()
        raise AssertionError(f"vLLM did not come up in {START_TIMEOUT:.0f} s:\n{self.tail()}")

    def healthy(self) -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"{self.url}/health", timeout=5).status_code == 200
        return False

    def kill(self) -> None:
        """SIGKILL the whole process group (the API server and its engine core)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@pytest.fixture(scope="session")
def vllm(
    smollm2_model: ResolvedModel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VllmServer]:
    python = vllm_python()
    port = free_port()
    command = build_vllm_command(
        model_path=str(smollm2_model.path),
        served_model_name=SERVED,
        python=python,
        host="127.0.0.1",
        port=port,
        api_key=KEY,
        lora_rank=16,
        max_loras=2,
        max_cpu_loras=8,
        cpu=True,
    )
    server = VllmServer(
        command, f"http://127.0.0.1:{port}", tmp_path_factory.mktemp("vllm") / "vllm.log"
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def smollm2_adapter(smollm2_model: ResolvedModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A rank-8 LoRA adapter for SmolLM2 with small random B matrices: it visibly moves the
    model's answers without wrecking them."""
    from bot.testkit.models import build_tiny_adapter

    return build_tiny_adapter(
        smollm2_model.path,
        tmp_path_factory.mktemp("smollm2-adapter"),
        served_name=SERVED,
        rank=8,
        scale=0.02,
        seed=7,
    )
