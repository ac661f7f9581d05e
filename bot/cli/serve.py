"""``brandbot serve``: the inference server (the local engine, or vLLM on a GPU machine)."""

from __future__ import annotations

import ipaddress
import signal
from types import FrameType

import typer

from bot.cli.common import CliError, console, settings
from serving.base_model import resolve_base_model

ENGINES = ("local", "vllm")
INSECURE_FLAG = "--allow-insecure-no-api-key"


def is_loopback(host: str) -> bool:
    """Whether ``host`` only listens on this machine (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def serve(
    port: int = typer.Option(8000, "--port", help="TCP port to listen on."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    api_key: str | None = typer.Option(
        None,
        "--api-key",
        help="Bearer key required on /v1 (default: BRANDBOT_INFERENCE_API_KEY).",
    ),
    engine: str = typer.Option(
        "local",
        "--engine",
        help="local (CPU/CUDA, transformers) or vllm (from BRANDBOT_VLLM_PYTHON or .venv-vllm; "
        "the CPU build works too, see scripts/setup-vllm.sh).",
    ),
    threads: int | None = typer.Option(None, "--threads", help="torch CPU threads (local engine)."),
    max_batch_size: int = typer.Option(32, "--max-batch-size", help="Sequences per step (local)."),
    lora_rank: int = typer.Option(16, "--lora-rank", help="Highest adapter rank to accept."),
    max_loras: int = typer.Option(4, "--max-loras", help="Adapters resident at once."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="With --engine vllm: print the command instead of running it."
    ),
    allow_insecure_no_api_key: bool = typer.Option(
        False,
        INSECURE_FLAG,
        help="Serve on a non-loopback --host without an API key (anyone who can reach it can "
        "generate, read /metrics and load adapters).",
    ),
    prepare: bool = typer.Option(
        False,
        "--prepare",
        help="Only resolve (convert once) the base model, point <models>/base at it, and exit.",
    ),
) -> None:
    """Serve the base model and its LoRA adapters over vLLM's OpenAI-compatible HTTP API.

    Example: brandbot serve --port 8000, then BRANDBOT_INFERENCE_URL=http://127.0.0.1:8000
    """
    if engine not in ENGINES:
        raise CliError(f"--engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    cfg = settings()
    if api_key is None and cfg.inference_api_key is not None:
        api_key = cfg.inference_api_key.get_secret_value()
    insecure = not api_key and not is_loopback(host) and allow_insecure_no_api_key
    if insecure:
        typer.echo(f"warning: serving on {host} with no API key ({INSECURE_FLAG})", err=True)
    elif not api_key and not is_loopback(host) and not (prepare or dry_run):
        raise CliError(
            f"refusing to serve on {host} without an API key: set BRANDBOT_INFERENCE_API_KEY "
            f"(or --api-key), listen on 127.0.0.1, or pass {INSECURE_FLAG}"
        )
    model = resolve_base_model(cfg.base_model, cfg.models_dir)
    if prepare:
        # a stable path for servers started elsewhere (vLLM in compose/Kubernetes)
        link = cfg.models_dir / "base"
        link.parent.mkdir(parents=True, exist_ok=True)
        tmp = link.with_name(".base.tmp")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(model.path.resolve(), target_is_directory=True)
        tmp.replace(link)
        typer.echo(f"{link} -> {model.path.resolve()} (fingerprint {model.fingerprint})")
        return
    if engine == "vllm":
        import torch

        from serving.vllm_launch import (
            VllmMissing,
            build_vllm_command,
            exec_vllm,
            find_vllm_python,
        )

        try:
            python = find_vllm_python(cfg.vllm_python)
        except VllmMissing as exc:
            if not dry_run:
                raise CliError(str(exc)) from None
            python = cfg.vllm_python or "python"
        command = build_vllm_command(
            model_path=str(model.path.resolve()),
            served_model_name=cfg.served_model_name,
            python=python,
            host=host,
            port=port,
            api_key=api_key,
            lora_rank=lora_rank,
            max_loras=max_loras,
            cpu=not torch.cuda.is_available(),
        )
        if dry_run:
            typer.echo(command.printable())
            return
        exec_vllm(command)
        return
    import uvicorn

    from serving.engine import LocalEngine
    from serving.server import create_app, uvicorn_config

    console.print(
        f"[bold]brandbot serve[/]: {cfg.served_model_name} = {model.path} "
        f"(fingerprint {model.fingerprint[:12]}) on http://{host}:{port}"
    )
    local = LocalEngine(
        model.path,
        served_name=cfg.served_model_name,
        threads=threads,
        max_batch_size=max_batch_size,
        max_loras=max_loras,
    )
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        app = create_app(local, api_key=api_key)
        uvicorn.Server(uvicorn_config(app, host, port)).run()
    except _Terminated:
        pass  # uvicorn shut down gracefully, then re-raised SIGTERM: a requested, clean stop
    finally:
        signal.signal(signal.SIGTERM, previous)
        local.close()


class _Terminated(Exception):
    """SIGTERM arrived (systemd, Docker, Kubernetes stopping the server)."""


def _terminated(signum: int, frame: FrameType | None) -> None:
    raise _Terminated
