"""The vLLM command line and environment built from the settings."""

from __future__ import annotations

from pathlib import Path

from serving.vllm_launch import build_vllm_command, vllm_installed
from tests.conftest import CliRunner


def test_vllm_command_from_settings() -> None:
    cmd = build_vllm_command(
        model_path="/models/abc", served_model_name="brandbot-base", port=8001,
        api_key="sekrit", lora_rank=12, max_loras=4,
    )  # fmt: skip
    argv = cmd.argv
    assert argv[:3] == ["vllm", "serve", "/models/abc"]

    def flag(name: str) -> str:
        return argv[argv.index(name) + 1]

    assert flag("--served-model-name") == "brandbot-base"
    assert "--enable-lora" in argv
    assert flag("--max-lora-rank") == "16"  # 12 rounded up to a value vLLM accepts
    assert int(flag("--max-cpu-loras")) >= int(flag("--max-loras")) == 4
    assert flag("--api-key") == "sekrit"
    assert flag("--port") == "8001"
    assert cmd.env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert "sekrit" not in cmd.printable()
    no_key = build_vllm_command(
        model_path="/m", served_model_name="b", max_loras=8, max_cpu_loras=2
    )
    assert "--api-key" not in no_key.argv
    assert no_key.argv[no_key.argv.index("--max-cpu-loras") + 1] == "8"


def test_serve_vllm_dry_run_and_missing_vllm(cli_sqlite: CliRunner, tiny_model_dir: Path) -> None:
    env = {"BRANDBOT_BASE_MODEL": str(tiny_model_dir), "BRANDBOT_SERVED_MODEL_NAME": "team-base"}
    out = cli_sqlite("serve", "--engine", "vllm", "--dry-run", "--api-key", "k", extra_env=env)
    assert out.code == 0, out.err
    assert "--served-model-name team-base" in out.out
    assert str(tiny_model_dir) in out.out
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True" in out.out
    if not vllm_installed():
        out = cli_sqlite("serve", "--engine", "vllm", extra_env=env)
        assert out.code == 2
        assert "gpu" in out.err


def test_serve_prepare_links_the_base_folder(cli_sqlite: CliRunner, tiny_model_dir: Path) -> None:
    out = cli_sqlite("serve", "--prepare", extra_env={"BRANDBOT_BASE_MODEL": str(tiny_model_dir)})
    assert out.code == 0, out.err
    link = Path(out.out.split(" -> ")[0])
    assert link.name == "base"
    assert link.resolve() == tiny_model_dir.resolve()
    assert "fingerprint" in out.out


def test_serve_rejects_an_unknown_engine(cli_sqlite: CliRunner) -> None:
    out = cli_sqlite("serve", "--engine", "tgi")
    assert out.code == 2
    assert "--engine must be one of local, vllm" in out.err
