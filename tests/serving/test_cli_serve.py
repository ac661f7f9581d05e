"""`brandbot serve` as the real console script on a real port."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import httpx
import openai

from serving.client import HttpClient
from tests.conftest import BRANDBOT, free_port, wait_until_up


def test_brandbot_serve_answers_the_openai_client(tiny_model_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRANDBOT_", "SLACK_"))}
    env |= {
        "BRANDBOT_DATA_DIR": str(tmp_path / "data"),
        "BRANDBOT_CONFIG": str(tmp_path / "brandbot.toml"),
        "BRANDBOT_BASE_MODEL": str(tiny_model_dir),
        "BRANDBOT_SERVED_MODEL_NAME": "team-base",
        "BRANDBOT_INFERENCE_API_KEY": "k3y",
    }
    proc = subprocess.Popen(
        [BRANDBOT, "serve", "--port", str(port), "--threads", "1"],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{url}/health", proc, timeout=60)
        oai = openai.OpenAI(base_url=f"{url}/v1", api_key="k3y", max_retries=0)
        assert [m.id for m in oai.models.list().data] == ["team-base"]
        out = oai.chat.completions.create(
            model="team-base", messages=[{"role": "user", "content": "hi"}], max_tokens=3
        )
        assert out.choices[0].finish_reason in {"stop", "length"}
        ours = HttpClient(url, api_key="k3y", retries=0)
        verdict = ours.classify([{"role": "user", "content": "refund please"}], ["billing", "bug"])
        assert verdict.label in {"billing", "bug"}
        assert httpx.get(f"{url}/v1/models").status_code == 401
        assert httpx.get(f"{url}/metrics").status_code == 401
        assert httpx.post(f"{url}/tokenize", json={"prompt": "hi"}).status_code == 401
        keyed = {"Authorization": "Bearer k3y"}
        assert httpx.get(f"{url}/metrics", headers=keyed).status_code == 200
        proc.send_signal(signal.SIGTERM)  # how systemd, Docker and Kubernetes stop it
        assert proc.wait(timeout=30) == 0, (proc.stdout.read() if proc.stdout else "")[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _env(tmp_path: Path, model: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRANDBOT_", "SLACK_"))}
    return env | {
        "BRANDBOT_DATA_DIR": str(tmp_path / "data"),
        "BRANDBOT_CONFIG": str(tmp_path / "brandbot.toml"),
        "BRANDBOT_BASE_MODEL": str(model),
    }


def test_serve_on_a_public_address_without_a_key_exits_naming_the_flag(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    public = "0.0.0.0"  # noqa: S104 - the address under test
    done = subprocess.run(
        [BRANDBOT, "serve", "--host", public, "--port", str(free_port())],
        env=_env(tmp_path, tiny_model_dir), cwd=tmp_path, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "--allow-insecure-no-api-key" in done.stderr and public in done.stderr


def test_the_insecure_flag_serves_a_public_address_without_a_key(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [BRANDBOT, "serve", "--host", "0.0.0.0", "--port", str(port), "--threads", "1",  # noqa: S104
         "--allow-insecure-no-api-key"],
        env=_env(tmp_path, tiny_model_dir), cwd=tmp_path, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{url}/health", proc, timeout=60)
        assert httpx.get(f"{url}/v1/models").status_code == 200
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
